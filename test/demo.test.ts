// `npm run demo`, the README's quick start, end to end: every part of it (one machine, a cluster
// of three daemons, every algorithm) runs, and each migrated output matches its unmigrated run.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { ROOT, TEST_CACHE } from './helpers/ferry.ts';

describe('npm run demo', { timeout: 900_000 }, () => {
  it('runs every part and ends with every output identical', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'demo', 'demo.ts')], { cwd: ROOT, env: { ...process.env, FERRY_CACHE_DIR: TEST_CACHE }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    const code = await new Promise<number | null>((r) => child.on('close', r));
    assert.equal(code, 0, `demo failed:\n${out.slice(-3000)}\n${err.slice(-3000)}`);
    assert.match(out, /All outputs identical\./);
    assert.match(out, /every algorithm, a<->b\s+9 migrations\s+0\s+identical/);
  });
});
