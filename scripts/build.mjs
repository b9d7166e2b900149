// npm run build: dist/ from scratch (so a package never ships stale files),
// the TypeScript compiled, and the Redis backend's Lua scripts copied beside
// the code that reads them at start-up.
import { execFileSync } from 'node:child_process';
import { cpSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';

rmSync('dist', { recursive: true, force: true });
execFileSync(process.execPath, [createRequire(import.meta.url).resolve('typescript/bin/tsc'), '-p', 'tsconfig.json'], { stdio: 'inherit' });
// Directories are walked; of the files, only .lua ones are copied (tsc wrote the rest).
cpSync('src', 'dist', { recursive: true, filter: (f) => !/\.[^/]+$/.test(f) || f.endsWith('.lua') });
