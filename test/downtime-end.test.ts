// The down time ends when the process runs again on the destination (thesis Fig. 2.1),
// not when the source hears of it (node/downtime-end.ts): nodes on one host compare the
// instant on the host's monotonic clock; elsewhere the destination's answer says how long
// the process had run when it was sent (its own clock), and the source ends the down time
// that much before the answer came. Shown with the answer held back 600 ms on the
// destination before it is made (FERRY_FAULTS dest-running:delay: either way excludes it)
// and after (dest-answer-sent:delay, an answer slow on its way back: only the host's
// clock excludes it). The migration takes that long, its down time not.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterClient, startCluster } from './helpers/cluster.ts';
import { clusterRun, reference } from './helpers/modes.ts';
import { WORKLOADS, type Workload } from './helpers/workloads.ts';
import { downtimeEnd, ranFor } from '../src/node/downtime-end.ts';
import type { MigrationMetrics } from '../src/migration/index.ts';

const HOLD_MS = 600;
const rma: Workload = { ...WORKLOADS.find((w) => w.name === 'rma')!, args: ['4', '300'] };

describe('the end of the down time', { timeout: 300_000 }, () => {
  it('ranFor: a peer\'s ranForMs is taken only as a number within the round trip', () => {
    const cases: [unknown, number, number][] = [
      [3, 5, 3], [0, 5, 0], [10, 5, 5], [-1, 5, 0], [Number.NaN, 5, 0], [Infinity, 5, 0], ['3', 5, 0], [undefined, 5, 0], [null, 5, 0],
    ];
    for (const [v, rt, want] of cases) assert.equal(ranFor(v, rt), want, `ranFor(${String(v)}, ${rt})`);
  });

  it('downtimeEnd: the host clock where both nodes read it and the instant lies within the round trip, else the answer', () => {
    const here = { boot: 'B', hostNow: 10_000, now: 500 }; // host clock 10000 = this clock 500
    const cases: { name: string; answer: Record<string, unknown>; want: { at: number; by: string } }[] = [
      { name: 'same host', answer: { ranForMs: 3, ranAtHostMs: 9_995, boot: 'B' }, want: { at: 495, by: 'host-clock' } },
      { name: 'another host', answer: { ranForMs: 3, ranAtHostMs: 9_995, boot: 'C' }, want: { at: 497, by: 'answer' } },
      { name: 'no boot id here', answer: { ranForMs: 3, ranAtHostMs: 9_995, boot: null }, want: { at: 497, by: 'answer' } },
      { name: 'before the commit was sent', answer: { ranForMs: 3, ranAtHostMs: 9_000, boot: 'B' }, want: { at: 497, by: 'answer' } },
      { name: 'after the answer came', answer: { ranForMs: 3, ranAtHostMs: 10_001, boot: 'B' }, want: { at: 497, by: 'answer' } },
      { name: 'not a number', answer: { ranForMs: 3, ranAtHostMs: '9995', boot: 'B' }, want: { at: 497, by: 'answer' } },
      { name: 'an older peer', answer: { ranForMs: 3 }, want: { at: 497, by: 'answer' } },
      { name: 'nothing', answer: {}, want: { at: 500, by: 'answer' } },
    ];
    for (const k of cases) assert.deepEqual(downtimeEnd(k.answer, 490, 500, k.name === 'no boot id here' ? { ...here, boot: null } : here), k.want, k.name);
  });

  // Post-copy: post-processing begins when the process runs there, so the push is timed from then.
  const CASES = ['dest-running', 'dest-answer-sent'].flatMap((fault) => ['total-copy', 'post-copy'].map((algorithm) => ({ fault, algorithm })));
  for (const { fault, algorithm } of CASES) {
    it(`${algorithm}: an answer held ${HOLD_MS} ms on the destination (${fault}) does not count as down time`, async () => {
      const expected = await reference(rma);
      const c = await startCluster(2, { names: ['a', 'b'], env: { b: { FERRY_FAULTS: `${fault}:delay=${HOLD_MS}` } } });
      try {
        const client = ClusterClient.for(c);
        let tookMs = 0;
        const { outcome, during: m } = await clusterRun(c, client, rma, { node: 'a' }, async (pid): Promise<MigrationMetrics> => {
          const t0 = performance.now();
          const r = await client.migrate(pid, 'b', { algorithm });
          tookMs = performance.now() - t0;
          return r;
        });
        assert.equal(outcome.stdout, expected.stdout);
        assert.equal(outcome.exitCode, expected.exitCode);
        assert.equal(m.state, 'completed', m.error?.message);
        assert.match(c.nodes[1]!.log(), new RegExp(`FAULT ${fault}: delay=${HOLD_MS}`), 'the answer was held');
        assert.ok(tookMs >= HOLD_MS, `the migration took the hold (${tookMs.toFixed(0)} ms)`);
        assert.equal(m.downtimeEndedBy, 'host-clock', 'two nodes of one host: the instant on the host\'s clock');
        // Ended at the answer, the down time would be >= HOLD_MS.
        assert.ok(m.downtimeMs! < HOLD_MS - 200, `down time ${m.downtimeMs!.toFixed(1)} ms ends when it ran on b, not at the answer`);
        assert.ok(m.downtimeSteps.running! <= m.downtimeMs! + 0.01, `the 'running' step (${m.downtimeSteps.running} ms) is the down time's end`);
        if (algorithm === 'total-copy') assert.ok(m.totalMs! < HOLD_MS - 200, `total ${m.totalMs!.toFixed(1)} ms = the down time`);
        else assert.ok(m.postProcessingMs! >= HOLD_MS - 10, `post-processing (${m.postProcessingMs!.toFixed(0)} ms) runs from the process's start on b, through the held answer`);
      } finally { await c.stop(); }
    });
  }
});
