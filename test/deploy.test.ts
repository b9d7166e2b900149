/**
 * deploy/: the systemd unit passes `systemd-analyze verify`, and the
 * Dockerfile says what the README promises. (No container runtime here: the
 * Dockerfile's install steps are exercised by test/pack.test.ts.)
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from './helpers.js';

const unit = readFileSync(join(ROOT, 'deploy', 'hookbot.service'), 'utf8');
const dockerfile = readFileSync(join(ROOT, 'deploy', 'Dockerfile'), 'utf8');
const directive = (text: string, name: string) => [...text.matchAll(new RegExp(`^${name}=(.*)$`, 'gm'))].map((m) => m[1]);

describe('deploy/hookbot.service', () => {
  it('passes systemd-analyze verify with no warnings', () => {
    execFileSync('systemd-analyze', ['--version']);
    const dir = mkdtempSync(join(tmpdir(), 'hookbot-unit-'));
    // verify checks that ExecStart exists; on this machine hookbot is not installed in /usr/local/bin.
    const file = join(dir, 'hookbot.service');
    writeFileSync(file, unit.replace('/usr/local/bin/hookbot', process.execPath));
    const r = spawnSync('systemd-analyze', ['verify', file], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr.split('\n').filter((l) => l.includes('hookbot.service'))).toEqual([]);
  });

  it('runs as a user of its own, from an environment file, with the data directory as its state, restarting on failure', () => {
    expect(directive(unit, 'DynamicUser')).toEqual(['yes']);
    expect(directive(unit, 'User')).toEqual([]);
    expect(directive(unit, 'EnvironmentFile')).toEqual(['/etc/hookbot/hookbot.env']);
    expect(directive(unit, 'StateDirectory')).toEqual(['hookbot']);
    expect(directive(unit, 'Environment')).toContain('HOOKBOT_DATA_DIR=/var/lib/hookbot');
    expect(directive(unit, 'Restart')).toEqual(['on-failure']);
    expect(directive(unit, 'ExecStart')).toEqual(['/usr/local/bin/hookbot serve']);
  });
});

describe('deploy/Dockerfile', () => {
  it('Node 20 slim, non-root, a volume for the data directory, a health check on /healthz, port 8080', () => {
    const from = [...dockerfile.matchAll(/^FROM (\S+)/gm)].map((m) => m[1]);
    expect(from.every((f) => f === 'node:20-slim')).toBe(true);
    expect(/^USER (\S+)/m.exec(dockerfile)?.[1]).toBe('node');
    expect(dockerfile).toMatch(/^VOLUME \["\/var\/lib\/hookbot"\]/m);
    expect(dockerfile).toMatch(/HOOKBOT_DATA_DIR=\/var\/lib\/hookbot/);
    expect(dockerfile).toMatch(/^HEALTHCHECK [\s\S]*\/healthz/m);
    expect(dockerfile).toMatch(/^EXPOSE 8080$/m);
  });

  it('installs the package the way test/pack.test.ts does', () => {
    expect(dockerfile).toMatch(/npm ci && npm pack --pack-destination \/tmp/);
    expect(dockerfile).toMatch(/npm install --omit=dev \/tmp\/hookbot-\*\.tgz/);
  });
});
