// --postcopy-after-rounds N over real daemons: a pre-copy (plain or queued) that has
// not converged after N rounds freezes, ships the state alone (and a bitmap of the
// pages the destination holds old copies of), and finishes as a post-copy: the
// process runs on the destination at once, faults in what it lacks from the source,
// which pushes the rest. A pre-copy that converges does not switch.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterClient, startCluster } from './helpers/cluster.ts';
import { clusterRun, reference } from './helpers/modes.ts';
import { prepareAllVariants, WORKLOADS, type Workload } from './helpers/workloads.ts';
import type { MigrationMetrics } from '../src/migration/index.ts';

const workload = (name: string, args: string[]): Workload => ({ ...WORKLOADS.find((w) => w.name === name)!, args });

describe('switching a pre-copy that does not converge to post-copy', { timeout: 1_200_000 }, () => {
  before(prepareAllVariants);

  it('RMA 4 MB at 10 Mb/s with --postcopy-after-rounds 2 (pre-copy, then queued pre-copy): switches, down time carries no pages, output identical', async (t) => {
    // Long enough to outlast both migrations (~20 s at 10 Mb/s) on a loaded 2-core machine: ~26 s
    // unmigrated here (600 and then 1500 million writes once ended first, the second time once
    // the fast paths had made RMA faster).
    const w = workload('rma', ['4', '8000']);
    const expected = await reference(w);
    assert.equal(expected.exitCode, 0, expected.stderr);
    const c = await startCluster(2, { names: ['a', 'b'], extraArgs: ['--link-bandwidth', '10mbit'] });
    try {
      const client = ClusterClient.for(c);
      const { outcome, during } = await clusterRun(c, client, w, { node: 'a' }, async (pid) => {
        // Refused before anything moves: the process keeps running where it is.
        await assert.rejects(client.migrate(pid, 'b', { algorithm: 'total-copy', postcopyAfterRounds: 2 }), /applies to pre-copy/);
        await assert.rejects(client.migrate(pid, 'b', { algorithm: 'pre-copy', postcopyAfterRounds: 0 }), /postcopyAfterRounds/);
        const ms: MigrationMetrics[] = [];
        for (const [to, algorithm] of [['b', 'pre-copy'], ['a', 'queued-pre-copy']] as const) {
          const m = await client.migrate(pid, to, { algorithm, postcopyAfterRounds: 2 });
          assert.equal(m.state, 'completed', `${algorithm}: ${m.error?.message}`);
          t.diagnostic(`${algorithm}: switched ${m.switchedToPostCopy} after ${m.rounds} rounds; bytes preparation ${m.bytes.preparation}, down time ${m.bytes.downtime}, ` +
            `post-processing ${m.bytes.postProcessing}; ${m.remoteFaults} remote faults; down time ${m.downtimeMs?.toFixed(1)} ms, post-processing ${m.postProcessingMs?.toFixed(1)} ms`);
          ms.push(m);
        }
        return ms;
      });
      assert.equal(outcome.exitCode, 0, outcome.stderr);
      assert.equal(outcome.stdout, expected.stdout);
      assert.equal(during.length, 2);
      for (const m of during) {
        assert.equal(m.switchedToPostCopy, true, `${m.algorithm}: RMA's 4 MB never fit 300 ms at 10 Mb/s: it switched`);
        // Pre-copy gives it the 2 rounds; queued pre-copy switches as soon as its working set
        // stops shrinking (RMA writes every page: after its first round), at most after 2.
        if (m.algorithm === 'pre-copy') assert.equal(m.rounds, 2, 'pre-copy: switched after 2 rounds');
        else assert.ok(m.rounds >= 1 && m.rounds <= 2, `queued pre-copy: switched after ${m.rounds} rounds`);
        // The state and a bitmap of one bit per page: no page (the post-copy invariant of compliance.test.ts).
        assert.ok(m.bytes.downtime < 64 * 1024 + m.pages.addressSpace, `${m.algorithm}: down time carries no pages (${m.bytes.downtime} bytes)`);
        assert.ok(m.bytes.postProcessing > 1 << 20, `${m.algorithm}: the pages written since they were sent went after the freeze (${m.bytes.postProcessing} bytes)`);
        assert.ok(m.postProcessingMs !== null && m.totalMs !== null, 'post-processing ended');
        assert.deepEqual(m.residualDependencies, []);
        assert.ok(m.pages.maxSendsPerPage <= m.rounds + 2, `${m.algorithm}: once a round, then pushed or fetched (a fault may race the push): ${m.pages.maxSendsPerPage}`);
      }
    } finally { await c.stop(); }
  });

  it('a pre-copy that converges does not switch (getpid at 10 Mb/s, --postcopy-after-rounds 1)', async () => {
    const w = workload('getpid', ['20000000']); // ~7 s on an idle machine: it outlives setup and a round at 10 Mb/s
    const expected = await reference(w);
    const c = await startCluster(2, { names: ['a', 'b'], extraArgs: ['--link-bandwidth', '10mbit'] });
    try {
      const client = ClusterClient.for(c);
      const { outcome, during: m } = await clusterRun(c, client, w, { node: 'a' }, (pid) => client.migrate(pid, 'b', { algorithm: 'pre-copy', postcopyAfterRounds: 1 }));
      assert.equal(m.state, 'completed', m.error?.message);
      assert.equal(m.switchedToPostCopy, false, `its pages fit the down time after ${m.rounds} round(s)`);
      assert.equal(m.postProcessingMs, 0);
      assert.equal(outcome.stdout, expected.stdout);
      assert.equal(outcome.exitCode, 0);
    } finally { await c.stop(); }
  });
});
