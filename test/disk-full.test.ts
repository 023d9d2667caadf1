// A node whose disk is full (a real one: a 1 MiB tmpfs, filled to the last byte, holds
// its data directory and its module cache). A destination writes nothing a migration
// needs: the program's bytes and its prepared module are cached on disk only to save
// later work, and a cache write that fails costs only that. So the process moves to
// the full node, runs there with output identical to an unmigrated run, moves on from
// it (which needs the program's bytes it could not store), leaving no half-written cache
// file behind, and a checkpoint written to a full device (a character device like
// /dev/full) fails with an error naming it while the process runs on.
// Mounting a tmpfs needs root: skipped otherwise, with the reason.
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readdirSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterClient, startCluster } from './helpers/cluster.ts';
import { clusterRun, reference } from './helpers/modes.ts';
import { WORKLOADS, type Workload } from './helpers/workloads.ts';

const rma: Workload = { ...WORKLOADS.find((w) => w.name === 'rma')!, args: ['8', '2000'] }; // ~10 s: outlasts b's first transform of the module (its cache is on the full disk)

/** Mount a tmpfs of `bytes` at dir; null if this machine cannot (not root, no mount). */
function mountTmpfs(dir: string, bytes: number): string | null {
  if (process.getuid?.() !== 0) return 'mounting a tmpfs needs root';
  mkdirSync(dir, { recursive: true });
  try { execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', dir], { stdio: 'pipe' }); } catch (e) { return `mount failed: ${(e as Error).message}`; }
  return null;
}

/** Write a file until the file system says ENOSPC; returns the bytes it took. */
function fill(dir: string): number {
  const fd = openSync(join(dir, 'filler'), 'w');
  const block = Buffer.alloc(4096, 1);
  let n = 0;
  try {
    for (;;) n += writeSync(fd, block);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally { closeSync(fd); }
  return n;
}

describe('a node with a full disk', { timeout: 300_000 }, () => {
  it('the process moves to it, runs there, moves on from it, output identical; a checkpoint to a full device fails naming it', async (t) => {
    const c = await startCluster(2, { names: ['a', 'c'] });
    const disk = join(c.dir, 'b');
    const cannot = mountTmpfs(disk, 1 << 20);
    try {
      if (cannot) { t.skip(cannot); return; }
      const b = await c.addNode('b', { env: { FERRY_CACHE_DIR: join(disk, 'cache') } });
      assert.equal(b.dataDir, disk);
      assert.ok(fill(disk) > 0);
      const expected = await reference(rma);
      const client = ClusterClient.for(c);
      const { outcome, during } = await clusterRun(c, client, rma, { node: 'a' }, async (pid) => {
        const toB = await client.migrate(pid, 'b');
        assert.equal(toB.state, 'completed', toB.error?.message);
        assert.match(b.log(), new RegExp(`${pid.replace('/', '\\/')} arrived`));
        // A checkpoint to a full device (/dev/full's twin, made here: written in place, never
        // replaced by a file): a clear error naming it; the process runs on.
        const full = join(c.dir, 'full');
        execFileSync('mknod', ['-m', '666', full, 'c', '1', '7']);
        const cp = await c.ferry(['checkpoint', pid, '-o', full]);
        assert.notEqual(cp.exitCode, 0, 'a checkpoint to a full device fails');
        assert.match(cp.stderr.toString(), new RegExp(`cannot write image ${full}: ENOSPC`), cp.stderr.toString());
        assert.ok(statSync(full).isCharacterDevice(), 'the device is still a device');
        assert.equal((await client.ps()).find((p) => p.pid === pid)?.node, 'b', 'it runs on b after the failed checkpoint');
        // Moving on needs the program's bytes, which b could not write to its disk.
        const toC = await client.migrate(pid, 'c');
        assert.equal(toC.state, 'completed', toC.error?.message);
        return pid;
      });
      assert.equal(outcome.exitCode, expected.exitCode, outcome.stderr);
      assert.equal(outcome.stdout, expected.stdout, 'output identical');
      assert.match(c.nodes.find((n) => n.name === 'c')!.log(), new RegExp(`${during.replace('/', '\\/')} arrived`));
      // The cache writes that failed left no half-written temp file on b's disk.
      const left = readdirSync(disk, { recursive: true }).map(String).filter((f) => f.includes('.tmp'));
      assert.deepEqual(left, [], 'no temp file left');
    } finally {
      // Detached first (lazily: b may still use it), so removing the temp dir finds a plain directory.
      if (!cannot) try { execFileSync('umount', ['-l', disk], { stdio: 'pipe' }); } catch { /* not mounted */ }
      await c.stop();
    }
  });
});
