// Invariants of the algorithms beyond the compliance suite (issue 4), over real
// daemons: post-copy's down time does not grow with the address space; pre-copy
// with auto-converge completes on RMA over a slow link; with its source killed
// during post-processing, post-copy and assisted post-copy fail naming that node
// and flushing (its pages on the file server) carries on.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { addFileServer, ClusterClient, eventually, startCluster } from './helpers/cluster.ts';
import { clusterRun, ferryRun, outlasting } from './helpers/modes.ts';
import { prepareAllVariants, WORKLOADS, type Workload } from './helpers/workloads.ts';
import { strategyFor, type MigrationMetrics } from '../src/migration/index.ts';

const rma = (mb: number, millions: number): Workload => ({ ...WORKLOADS.find((w) => w.name === 'rma')!, args: [String(mb), String(millions)] });

describe('algorithm invariants', { timeout: 900_000 }, () => {
  before(prepareAllVariants);
  it('post-copy down time does not grow with the address space (RMA 4 MB vs 256 MB, least of three hops within 2x)', async (t) => {
    const c = await startCluster(2, { names: ['a', 'b'] });
    try {
      const client = ClusterClient.for(c);
      const downs: Record<number, number[]> = {};
      for (const mb of [4, 256]) {
        const w = rma(mb, 400);
        const { during } = await clusterRun(c, client, w, { node: 'a' }, async (pid) => {
          const ms: MigrationMetrics[] = [];
          for (const to of ['b', 'a', 'b']) {
            const m = await client.migrate(pid, to, { algorithm: 'post-copy' });
            assert.equal(m.state, 'completed', m.error?.message);
            ms.push(m);
          }
          return ms;
        });
        downs[mb] = during.map((m) => m.downtimeMs!);
        for (const m of during) assert.ok(m.bytes.downtime < 1 << 20, `down time carries no pages (${m.bytes.downtime} bytes at ${mb} MB)`);
      }
      // The least of each: a structural cost shows in every hop, a busy CPU (CI runs two
      // test files at once) only in some.
      const small = Math.min(...downs[4]!), big = Math.min(...downs[256]!);
      t.diagnostic(`down times (ms): 4 MB ${downs[4]!.map((d) => d.toFixed(1)).join(' ')}; 256 MB ${downs[256]!.map((d) => d.toFixed(1)).join(' ')}`);
      assert.ok(big <= 2 * Math.max(small, 10), `down time ${big.toFixed(1)} ms at 256 MB vs ${small.toFixed(1)} ms at 4 MB`);
    } finally { await c.stop(); }
  });

  it('pre-copy with auto-converge completes on RMA at 10 Mb/s, output identical', async () => {
    const c = await startCluster(2, { names: ['a', 'b'], extraArgs: ['--link-bandwidth', '10mbit'] });
    try {
      const client = ClusterClient.for(c);
      await outlasting([1500, 6000, 24000], async (millions) => {
        const w = rma(4, millions);
        const expected = await ferryRun(w);
        const { outcome, during: m } = await clusterRun(c, client, w, { node: 'a' }, async (pid) => {
          const m = await client.migrate(pid, 'b', { algorithm: 'pre-copy', autoConverge: true, maxRounds: 30, downtimeLimitMs: 1000 });
          assert.equal(m.state, 'completed', m.error?.message);
          return m;
        });
        assert.ok(m.throttle > 0, 'the writer was throttled');
        assert.ok(m.rounds >= 2, `several rounds (${m.rounds})`);
        assert.equal(outcome.stdout, expected.stdout);
        assert.equal(outcome.exitCode, 0);
      });
    } finally { await c.stop(); }
  });

  // The source killed during post-processing (kill -9 once the process runs on the destination):
  // algorithms that still need it fail naming it; flushing's process faults from the file server.
  // 64 MB where the kill must land while the source still pushes (or flushes): at 100 Mb/s that
  // takes ~5 s. Flushing's pages are all on the file server at the commit, so its process needs
  // less memory: it runs to the end faulting every page it touches from f, one at a time.
  const SOURCE_DIES: { algorithm: string; outcome: 'fails' | 'survives'; w: Workload }[] = [
    { algorithm: 'post-copy', outcome: 'fails', w: rma(64, 2000) },
    { algorithm: 'assisted-post-copy', outcome: 'fails', w: rma(64, 2000) },
    { algorithm: 'flushing', outcome: 'survives', w: rma(8, 400) },
    // Killed right after the commit, while it still flushes to the file server (before the hand-over).
    { algorithm: 'freeze-free', outcome: 'fails', w: rma(64, 2000) },
  ];
  for (const k of SOURCE_DIES) it(`${k.algorithm} whose source dies during post-processing: ${k.outcome === 'fails' ? 'the process fails naming that node' : 'the process carries on, output identical'}`, async () => {
    const w = k.w;
    const c = await startCluster(3, { names: ['h', 's', 'd'], extraArgs: ['--link-bandwidth', '100mbit'] });
    try {
      if (strategyFor(k.algorithm).fileServer) await addFileServer(c, 'f', ['--link-bandwidth', '100mbit'], [1]);
      const client = ClusterClient.for(c, 0);
      // Home h (its stdio stays there); moved to s, then from s to d with the algorithm.
      const { outcome } = await clusterRun(c, client, w, { node: 'h', via: 0 }, async (p) => {
        const first = await client.migrate(p, 's');
        assert.equal(first.state, 'completed', first.error?.message);
        const mig = client.migrate(p, 'd', { algorithm: k.algorithm }).catch((e: Error) => e); // its source is about to die
        // The push (or the flush) goes on for seconds; the process runs on d meanwhile.
        await eventually(async () => (await client.ps()).find((x) => x.pid === p && x.node === 'd'), 60_000, 'the process to run on d');
        await c.kill9(1);
        await mig;
      });
      if (k.outcome === 'fails') {
        assert.notEqual(outcome.exitCode, 0);
        assert.match(outcome.stderr, /held by node s/, `the error names the node that held the pages: ${outcome.stderr}`);
      } else {
        const expected = await ferryRun(w);
        assert.equal(outcome.exitCode, 0, outcome.stderr);
        assert.equal(outcome.stdout, expected.stdout);
      }
    } finally { await c.stop(); }
  });
});
