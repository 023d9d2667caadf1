// The checkpoint entry points of `ferry run`: SIGTERM, periodic checkpoints, and a
// freeze while the program is blocked reading stdin.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ferry, tempDir, FERRY_BIN, ROOT, TEST_CACHE } from './helpers/ferry.ts';
import { eventually } from './helpers/cluster.ts';
import { runNodeWasi } from './helpers/oracle.ts';

const sleeper = join(ROOT, 'workloads', 'bin', 'sleeper.wasm');
const reference = join(ROOT, 'workloads', 'bin', 'reference.wasm');

/** Start ferry with stdin left open; resolves when it exits. */
function startFerry(args: string[]) {
  const child = spawn(process.execPath, [FERRY_BIN, ...args], { env: { ...process.env, FERRY_CACHE_DIR: TEST_CACHE }, stdio: ['pipe', 'pipe', 'pipe'] });
  const out: Buffer[] = [], err: Buffer[] = [];
  child.stdout.on('data', (d) => out.push(d));
  child.stderr.on('data', (d) => err.push(d));
  const done = new Promise<{ code: number | null; stdout: Buffer; stderr: string }>((res) =>
    child.on('close', (code) => res({ code, stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString() })));
  const firstOutput = new Promise<void>((res) => child.stdout.once('data', () => res()));
  return { child, done, firstOutput, stderr: () => Buffer.concat(err).toString() };
}

describe('checkpoint entry points', () => {
  it('SIGTERM with --checkpoint writes an image and exits 85; restore finishes the run', async () => {
    const t = tempDir();
    try {
      const image = join(t.path, 'term.img');
      const args = ['30', '40'];
      const expected = await runNodeWasi({ wasm: sleeper, args: [sleeper, ...args] });
      const run = startFerry(['run', '--checkpoint', image, sleeper, ...args]);
      await run.firstOutput;
      await new Promise((r) => setTimeout(r, 300));
      run.child.kill('SIGTERM');
      const a = await run.done;
      assert.equal(a.code, 85, a.stderr);
      const b = await ferry(['restore', image]);
      assert.equal(b.exitCode, 0, b.stderr.toString());
      assert.equal(Buffer.concat([a.stdout, b.stdout]).toString(), expected.stdout.toString());
    } finally { t.cleanup(); }
  });

  it('SIGTERM without --checkpoint ends the process (143)', async () => {
    const run = startFerry(['run', sleeper, '100', '50']);
    await run.firstOutput;
    run.child.kill('SIGTERM');
    assert.equal((await run.done).code, 143);
  });

  it('--checkpoint-every writes restorable images while the program keeps running', async () => {
    const t = tempDir();
    try {
      const image = join(t.path, 'periodic.img');
      const args = ['8000'];
      const expected = (await runNodeWasi({ wasm: reference, args: [reference, ...args] })).stdout.toString();
      const r = await ferry(['run', '--verbose', '--checkpoint', image, '--checkpoint-every', '0.25', reference, ...args]);
      assert.equal(r.exitCode, 0, r.stderr.toString());
      assert.equal(r.stdout.toString(), expected, 'periodic checkpoints do not disturb the run');
      const taken = (r.stderr.toString().match(/checkpoint written/g) ?? []).length;
      assert.ok(taken >= 1, `at least one periodic checkpoint (stderr: ${r.stderr})`);
      assert.ok(existsSync(image));
      // The last checkpoint replays the tail of the run: its output is a suffix of the whole.
      const tail = await ferry(['restore', image]);
      assert.equal(tail.exitCode, 0, tail.stderr.toString());
      assert.ok(tail.stdout.length > 0 && expected.endsWith(tail.stdout.toString()), `restore printed a suffix: ${tail.stdout}`);
    } finally { t.cleanup(); }
  });

  // An image that cannot be written (here its directory does not exist; a full disk is the same
  // error path, test/disk-full.test.ts) loses no work: the program runs on.
  it('a periodic checkpoint that cannot be written: the program runs on to its end, each failure named', async () => {
    const t = tempDir();
    try {
      const image = join(t.path, 'missing-dir', 'periodic.img');
      const args = ['8000'];
      const expected = (await runNodeWasi({ wasm: reference, args: [reference, ...args] })).stdout.toString();
      const r = await ferry(['run', '--checkpoint', image, '--checkpoint-every', '0.25', reference, ...args]);
      assert.equal(r.exitCode, 0, r.stderr.toString());
      assert.equal(r.stdout.toString(), expected, 'the run finished, output identical');
      assert.match(r.stderr.toString(), new RegExp(`checkpoint not written, the program runs on: cannot write image ${image}: there is no directory ${join(t.path, 'missing-dir')}$`, 'm'));
    } finally { t.cleanup(); }
  });

  it('a vacate that cannot write its image: the program runs on with its stdin (none lost), and a second SIGTERM ends it', async () => {
    const t = tempDir();
    try {
      const dir = join(t.path, 'missing-dir');
      const image = join(dir, 'vacate.img');
      const input = Buffer.from(Array.from({ length: 40 }, (_, i) => `line ${i} hello ${'x'.repeat(i)}\n`).join(''));
      // The program (rounds, no stdin read) never asks for its stdin: at the vacate every byte is
      // still in the pipe, read ahead for the image, and given back when the image cannot be written.
      const run = startFerry(['run', '--checkpoint', image, '--checkpoint-every', '0.2', sleeper, '150', '40']);
      run.child.stdin.end(input);
      await run.firstOutput;
      run.child.kill('SIGTERM');
      const back = await eventually(async () => /could not vacate, the program runs on \(the (\d+) bytes of stdin read ahead given back to it\): (.*)/.exec(run.stderr()) ?? undefined, 10_000, 'the vacate to fail');
      assert.equal(Number(back[1]), input.length, 'every byte given was read ahead');
      assert.match(back[2]!, new RegExp(`cannot write image ${image}: there is no directory ${dir}.*SIGTERM again`));
      // Once images can be written again, a periodic one holds that stdin: it was not lost.
      mkdirSync(dir);
      await eventually(async () => existsSync(image), 10_000, 'a periodic checkpoint after the failed vacate');
      const summary = JSON.parse((await ferry(['inspect', '--json', image])).stdout.toString());
      assert.equal(summary.wasi.stdinTakenBytes, input.length);
      assert.equal(summary.wasi.stdinBufferedBytes, input.length, 'the bytes given back wait for the program');
      assert.equal(summary.wasi.stdinEof, true);
      assert.equal(run.child.exitCode, null, 'still running after the failed vacate');
      run.child.kill('SIGTERM');
      const b = await run.done;
      assert.equal(b.code, 143, b.stderr);
    } finally { t.cleanup(); }
  });

  it('freezes a program blocked reading stdin, and the restored one reads on', async () => {
    const t = tempDir();
    try {
      const image = join(t.path, 'blocked.img');
      const input = Buffer.from('hello\nferry\nworld\n');
      const expected = await runNodeWasi({ wasm: sleeper, args: [sleeper, '--echo'], stdin: input });
      const run = startFerry(['run', '--checkpoint', image, '--vacate-after', '300', sleeper, '--echo']);
      // stdin stays open and empty: the program blocks in fd_read until the vacate.
      const a = await run.done;
      run.child.stdin.destroy();
      assert.equal(a.code, 85, a.stderr);
      assert.equal(a.stdout.length, 0);
      const b = await ferry(['restore', image], { stdin: input });
      assert.equal(b.exitCode, 0, b.stderr.toString());
      assert.equal(b.stdout.toString(), expected.stdout.toString());
    } finally { t.cleanup(); }
  });

  it('stdin given and ended before a vacate goes with the image, read or not: a restore without stdin finishes the run', async () => {
    const t = tempDir();
    try {
      const input = Buffer.from(Array.from({ length: 40 }, (_, i) => `line ${i} hello ${'x'.repeat(i)}\n`).join(''));
      const expected = await runNodeWasi({ wasm: sleeper, args: [sleeper, '--echo'], stdin: input });
      for (const delay of [1, 1, 2, 5]) {
        const image = join(t.path, `ahead-${delay}.img`);
        // Vacated 1 ms in, the program has often not asked for stdin yet: its bytes are still in
        // the pipe, which closes with this OS process. Ferry reads them ahead into the image.
        const a = await ferry(['run', '--checkpoint', image, '--vacate-after', String(delay), sleeper, '--echo'], { stdin: input });
        if (a.exitCode === 0) { assert.equal(a.stdout.toString(), expected.stdout.toString()); continue; } // it finished first
        assert.equal(a.exitCode, 85, a.stderr.toString());
        const summary = JSON.parse((await ferry(['inspect', '--json', image])).stdout.toString());
        assert.equal(summary.wasi.stdinTakenBytes, input.length, 'every byte given was taken');
        assert.equal(summary.wasi.stdinEof, true, 'and its end');
        const b = await ferry(['restore', image]);
        assert.equal(b.exitCode, 0, b.stderr.toString());
        assert.equal(Buffer.concat([a.stdout, b.stdout]).toString(), expected.stdout.toString(), `vacate after ${delay} ms`);
      }
    } finally { t.cleanup(); }
  });

  it('stdin read by ferry before a checkpoint is neither lost nor duplicated (unread bytes travel in the image)', async () => {
    const t = tempDir();
    try {
      const input = Buffer.from(Array.from({ length: 3000 }, (_, i) => `line ${i} ${'y'.repeat(i % 97)}\n`).join(''));
      const expected = await runNodeWasi({ wasm: sleeper, args: [sleeper, '--echo'], stdin: input });
      for (const delay of [1, 5, 40]) {
        const image = join(t.path, `stdin-${delay}.img`);
        // Input arrives at once but stdin stays open: the checkpoint lands while it is being consumed.
        const run = startFerry(['run', '--checkpoint', image, '--vacate-after', String(delay), sleeper, '--echo']);
        run.child.stdin.write(input);
        const a = await run.done;
        run.child.stdin.destroy();
        assert.equal(a.code, 85, a.stderr);
        // What ferry had read travels in the image; the rest is fed from where it stopped.
        const summary = JSON.parse((await ferry(['inspect', '--json', image])).stdout.toString());
        const taken = summary.wasi.stdinTakenBytes as number;
        assert.ok(taken >= summary.wasi.stdinBufferedBytes);
        const b = await ferry(['restore', image], { stdin: input.subarray(taken) });
        assert.equal(b.exitCode, 0, b.stderr.toString());
        assert.equal(Buffer.concat([a.stdout, b.stdout]).toString(), expected.stdout.toString(), `vacate after ${delay} ms`);
      }
    } finally { t.cleanup(); }
  });
});
