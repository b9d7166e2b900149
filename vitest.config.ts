import { defineConfig } from 'vitest/config';

/**
 * Tests that measure what an attack costs the server (CPU, event-loop stalls,
 * memory peaks): they run after every other file, one at a time, so another
 * test file's load on a 2-core machine is not part of what they measure.
 */
const MEASURED = ['test/hardening.test.ts', 'test/routers-forged.test.ts'];

export default defineConfig({
  test: {
    testTimeout: 20_000,
    hookTimeout: 20_000,
    // Real servers and sockets: keep files in separate processes, few at a time on a 2-core box.
    pool: 'forks',
    maxWorkers: 2,
    minWorkers: 1,
    projects: [
      { extends: true, test: { name: 'suite', include: ['test/**/*.test.ts'], exclude: MEASURED } },
      { extends: true, test: { name: 'measured', include: MEASURED, sequence: { groupOrder: 1 }, poolOptions: { forks: { singleFork: true } } } },
    ],
  },
});
