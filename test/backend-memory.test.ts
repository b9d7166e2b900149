import { MemoryBackend } from '../src/backends/memory.js';
import { backendContract } from './contract/backend.contract.js';

backendContract('memory', async (retention) => {
  const backend = new MemoryBackend(retention);
  return { backend, cleanup: () => backend.close() };
});
