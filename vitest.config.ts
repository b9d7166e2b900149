import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 20_000,
    hookTimeout: 20_000,
    // Real servers and sockets: keep files in separate processes, few at a time on a 2-core box.
    pool: 'forks',
    maxWorkers: 2,
    minWorkers: 1,
  },
});
