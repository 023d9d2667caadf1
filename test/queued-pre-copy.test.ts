// Queued pre-copy (thesis 2.3.6, 4.2.1) against pre-copy on the thesis's heavy
// writer, RMA 4 MB over a 100 Mb/s link, over real daemons: one process migrated
// back and forth, each algorithm with ferry's defaults and then with a down-time
// limit neither can meet. Queued pre-copy holds back the pages RMA keeps writing
// until the freeze, and freezes as soon as its working set stops shrinking;
// pre-copy sends them again in every round, for all 6 of its rounds.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterClient, startCluster } from './helpers/cluster.ts';
import { clusterRun, outlasting, reference } from './helpers/modes.ts';
import { prepareAllVariants, WORKLOADS, type Workload } from './helpers/workloads.ts';
import type { MigrationMetrics } from '../src/migration/index.ts';

const rma = (mb: number, millions: number): Workload => ({ ...WORKLOADS.find((w) => w.name === 'rma')!, args: [String(mb), String(millions)] });
const line = (m: MigrationMetrics, note: string) =>
  `${m.algorithm} (${note}): ${m.rounds} rounds, ${m.pages.addressSpace} pages, ${m.pages.sent} sent, ${m.pages.resent} resent, ` +
  `at most ${m.pages.maxSendsPerPage} sends per page; bytes: preparation ${m.bytes.preparation}, down time ${m.bytes.downtime}; ` +
  `down time ${m.downtimeMs?.toFixed(1)} ms, preparation ${m.preparationMs?.toFixed(1)} ms`;

describe('queued pre-copy', { timeout: 1_200_000 }, () => {
  before(prepareAllVariants);

  it('sends the pages RMA keeps writing less often than pre-copy (4 MB at 100 Mb/s), output identical', async (t) => {
    const c = await startCluster(2, { names: ['a', 'b'], extraArgs: ['--link-bandwidth', '100mbit'] });
    try {
      // Four migrations at 100 Mb/s, pre-copy's 6 rounds each: ~7 s whatever the machine's
      // speed (RMA 4 MB does ~350 M writes/s on a slow one); 4x and 16x longer where it ends first.
      await outlasting([6000, 24000, 96000], async (millions) => {
        const w = rma(4, millions);
        const expected = await reference(w);
        assert.equal(expected.exitCode, 0, expected.stderr);
        const client = ClusterClient.for(c);
        const plan: { to: string; algorithm: string; note: string; downtimeLimitMs?: number }[] = [
          { to: 'b', algorithm: 'pre-copy', note: 'defaults' },
          { to: 'a', algorithm: 'queued-pre-copy', note: 'defaults' },
          // 50 ms at 100 Mb/s is 625 KB: RMA's 4 MB of hot pages never fit, both run their 6 rounds.
          { to: 'b', algorithm: 'pre-copy', note: 'downtime limit 50 ms', downtimeLimitMs: 50 },
          { to: 'a', algorithm: 'queued-pre-copy', note: 'downtime limit 50 ms', downtimeLimitMs: 50 },
        ];
        const { outcome, during } = await clusterRun(c, client, w, { node: 'a' }, async (pid) => {
          const ms: MigrationMetrics[] = [];
          for (const { to, note, ...o } of plan) {
            const m = await client.migrate(pid, to, o);
            assert.equal(m.state, 'completed', `${o.algorithm} (${note}): ${m.error?.message}`);
            t.diagnostic(line(m, note));
            ms.push(m);
          }
          return ms;
        });
        assert.equal(outcome.exitCode, 0, outcome.stderr);
        assert.equal(outcome.stdout, expected.stdout);
        assert.equal(during.length, plan.length, 'every migration ran while the process did');
        for (const m of during.filter((x) => x.algorithm === 'queued-pre-copy')) {
          assert.ok(m.pages.maxSendsPerPage <= Math.ceil(m.rounds / 2) + 1, `at most once every two rounds plus the freeze (${m.pages.maxSendsPerPage} sends, ${m.rounds} rounds)`);
          assert.equal(m.switchedToPostCopy, false);
        }
        const [, , pre, queued] = during as [MigrationMetrics, MigrationMetrics, MigrationMetrics, MigrationMetrics];
        assert.equal(pre.rounds, 6, 'pre-copy did not converge: it ran out of rounds');
        assert.equal(pre.roundsEnded, 'rounds-exhausted');
        // RMA writes every page: its working set is as large after a round as before it.
        assert.equal(queued.roundsEnded, 'stalled', `queued pre-copy froze once its working set stopped shrinking (after ${queued.rounds} rounds)`);
        assert.ok(queued.rounds < pre.rounds, `queued pre-copy: ${queued.rounds} rounds`);
        assert.ok(queued.preparationMs! < pre.preparationMs!, `preparation: queued ${queued.preparationMs} ms < pre-copy ${pre.preparationMs} ms`);
        // Pre-copy sends RMA's pages in each of its rounds; queued pre-copy holds a page written
        // since it was queued back for the freeze.
        assert.ok(queued.pages.resent < pre.pages.resent, `resent: queued ${queued.pages.resent} < pre-copy ${pre.pages.resent}`);
        assert.ok(queued.pages.sent < pre.pages.sent, `sent: queued ${queued.pages.sent} < pre-copy ${pre.pages.sent}`);
        assert.ok(queued.pages.maxSendsPerPage < pre.pages.maxSendsPerPage, `sends per page: queued ${queued.pages.maxSendsPerPage} < pre-copy ${pre.pages.maxSendsPerPage}`);
      });
    } finally { await c.stop(); }
  });
});
