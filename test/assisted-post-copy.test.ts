// Assisted post-copy (thesis 3.2, 4.2.3) beyond the compliance suite: the
// temporary page store on its own, and over real daemons the "not modified"
// answers, the two-sends bound and the down time that carries the state alone.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterClient, startCluster } from './helpers/cluster.ts';
import { clusterRun, ferryRun, reference } from './helpers/modes.ts';
import { prepareAllVariants, WORKLOADS, type Workload } from './helpers/workloads.ts';
import { PageStore } from '../src/memory/page-store.ts';
import { preparedBytes } from '../src/vm/cache.ts';
import { ROOT, TEST_CACHE } from './helpers/ferry.ts';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MigrationMetrics } from '../src/migration/index.ts';
import { AssistedPostCopy } from '../src/migration/assisted-post-copy.ts';
import { MetricsRecorder } from '../src/migration/metrics.ts';
import type { SourceContext } from '../src/migration/strategy.ts';

const workload = (name: string, args: string[]): Workload => ({ ...WORKLOADS.find((w) => w.name === name)!, args });
const brief = (m: MigrationMetrics) => JSON.stringify({
  prep: m.preparationMs?.toFixed(1), down: m.downtimeMs?.toFixed(1), post: m.postProcessingMs?.toFixed(1), bytes: m.bytes, pages: m.pages,
  modifiedSincePass: m.modifiedSincePass, notModified: m.notModifiedAnswers, faults: m.remoteFaults, rtt: m.faultRoundTripMs?.toFixed(2), delay: m.executionDelayMs.toFixed(1),
});

describe('page store', () => {
  it('keeps pages apart, gives each back once, drops stale ones, frees emptied slabs', () => {
    const ps = 4096;
    const s = new PageStore(ps);
    const page = (v: number) => new Uint8Array(ps).fill(v);
    s.put(3, page(3)); s.put(700, page(7)); s.put(3, page(4)); // a newer copy replaces the older
    assert.equal(s.size, 2);
    const mem = new Uint8Array(1024 * ps);
    assert.equal(s.take(3, mem, 3 * ps), true);
    assert.equal(mem[3 * ps], 4);
    assert.equal(s.take(3, mem, 3 * ps), false, 'taken once');
    assert.equal(s.take(5, mem, 5 * ps), false, 'never held');
    assert.ok(s.bytes > 0);
    s.drop(700);
    assert.equal(s.size, 0);
    assert.equal(s.bytes, 0, 'emptied slabs are let go');
    assert.deepEqual([...s.indices()], []);
  });
});

describe('assisted post-copy: the source\'s answers', () => {
  // The strategy alone, over a plain context: which pages go when, and how a fault is answered.
  const ps = 4096;
  const setupStrategy = async (covered: number, written: number[]) => {
    const sent: number[][] = [];
    const metrics = new MetricsRecorder({ id: 't', pid: 'a/1', from: 'a', to: 'b', algorithm: 'assisted-post-copy', pageSize: ps, linkBytesPerSec: null });
    let cleared = -1;
    const ctx = {
      pageSize: ps, memory: new Uint8Array(0), metrics, signal: new AbortController().signal, phase: 'preparation' as const,
      sendPages: async (ix: Iterable<number>) => { const b: number[] = []; for (const i of ix) b.push(i); sent.push(b); },
      finish: async () => {},
      recover: async (e: unknown) => { throw e; },
      dirty: { addressSpacePages: () => covered, clear: (n: number) => { cleared = n; }, count: () => written.length, take: () => written, marked: (p: number) => written.includes(p), tracked: () => true },
    } satisfies SourceContext;
    const s = new AssistedPostCopy();
    await s.setup(ctx);
    assert.equal(cleared, covered, 'the dirty map is cleared before the pass');
    assert.ok(s.pending(ctx) > 0);
    await s.iterate(ctx);
    assert.equal(s.pending(ctx), 0, 'one pass');
    await s.complete(ctx, { logicalBytes: covered * ps } as never);
    return { s, ctx, sent, metrics };
  };

  it('a fault on a page not written since the pass: "not modified"; on a written one: its bytes; on a pushed one: "in flight"', async () => {
    const { s, ctx, sent, metrics } = await setupStrategy(8, [2, 5]);
    assert.deepEqual(sent, [[0, 1, 2, 3, 4, 5, 6, 7]], 'the pass: every page');
    assert.equal(metrics.m.modifiedSincePass, 2);
    assert.deepEqual(s.planFault([1, 2]), { send: [2], notModified: [1], inFlight: [] });
    // The destination asks only for pages it lacks: asked again, the answer was lost (a broken link).
    assert.deepEqual(s.planFault([2]), { send: [2], notModified: [], inFlight: [] }, 'a served page asked again is served again');
    await s.postProcess(ctx);
    assert.deepEqual(sent[1], [5], 'the push: modified pages not served to a fault');
    assert.deepEqual(s.planFault([5, 6]), { send: [], notModified: [6], inFlight: [5] }, 'a pushed page is waited for, not sent again');
  });

  it('a push cut by a broken link: the pushed pages the destination still lacks go again on the new connection', async () => {
    const { s, ctx, sent } = await setupStrategy(4, [0, 1, 2, 3]);
    let cuts = 0;
    await s.postProcess({
      ...ctx,
      sendPages: async (ix: Iterable<number>) => { sent.push([...ix]); if (cuts++ === 0) throw new Error('connection closed'); },
      recover: async () => [1, 3], // the destination got 0 and 2 before the link broke
    });
    assert.deepEqual(sent.slice(1), [[0, 1, 2, 3], [1, 3]]);
    assert.deepEqual(s.planFault([0, 1]), { send: [], notModified: [], inFlight: [0, 1] }, 'pushed again: waited for');
  });

  it('a page pushed before its fault is not sent to the fault', async () => {
    const { s, ctx, sent } = await setupStrategy(4, [0, 1, 2, 3]);
    await s.postProcess(ctx);
    assert.deepEqual(sent[1], [0, 1, 2, 3]);
    assert.deepEqual(s.planFault([0, 3]), { send: [], notModified: [], inFlight: [0, 3] });
  });
});

/** a -> b -> a with assisted post-copy, each migration completed. */
async function thereAndBack(client: ClusterClient, pid: string): Promise<MigrationMetrics[]> {
  const out: MigrationMetrics[] = [];
  for (const to of ['b', 'a']) {
    const m = await client.migrate(pid, to, { algorithm: 'assisted-post-copy' });
    assert.equal(m.state, 'completed', m.error?.message);
    out.push(m);
  }
  return out;
}

describe('assisted post-copy', { timeout: 2_400_000 }, () => {
  before(async () => { await prepareAllVariants(); process.env.FERRY_CACHE_DIR = TEST_CACHE; });

  it('readmostly over 100 Mb/s: faults on its table (not written since the pass) are answered without bytes; only the hot region goes twice; output identical', async () => {
    // A 16 MB table it only reads, a 4 MB region it writes everywhere all the time: after the
    // pass only the hot region is modified; while it is pushed, table reads fault.
    const w: Workload = { name: 'readmostly', wasm: join(ROOT, 'workloads', 'bin', 'readmostly.wasm'), args: ['16', '4', '40'] };
    for (const v of ['tracked', 'faulting'] as const) await preparedBytes(readFileSync(w.wasm), v);
    const expected = await ferryRun(w); // node:wasi crashes now and then (SIGSEGV) on a memory this size: ferry's unmigrated run is the reference
    assert.equal(expected.exitCode, 0, expected.stderr);
    const c = await startCluster(2, { names: ['a', 'b'], extraArgs: ['--link-bandwidth', '100mbit'] });
    try {
      const client = ClusterClient.for(c);
      // Once the table is filled (the first step line): from then on only the hot region is written.
      const { outcome, during: ms } = await clusterRun(c, client, w, { node: 'a', after: 'step ' }, (pid) => thereAndBack(client, pid));
      assert.equal(outcome.stdout, expected.stdout);
      assert.equal(outcome.exitCode, 0);
      const hotPages = (4 << 20) / 4096;
      for (const m of ms) {
        console.log(`# readmostly ${m.from} -> ${m.to}: ${brief(m)}`);
        assert.ok(m.modifiedSincePass >= hotPages * 0.9 && m.modifiedSincePass < hotPages + 64, `the hot region, and little else, was modified (${m.modifiedSincePass} pages)`);
        assert.ok(m.notModifiedAnswers > 0, 'faults on the table were answered "not modified"');
        assert.ok(m.pages.maxSendsPerPage <= 2);
        assert.ok(m.pages.resent <= m.modifiedSincePass);
        // After the commit only modified pages carry bytes: not the table again.
        assert.ok(m.bytes.postProcessing < (m.modifiedSincePass + m.remoteFaults) * (m.pages.pageSize + 64) + 64 * 1024,
          `post-processing sent ${m.bytes.postProcessing} bytes for ${m.modifiedSincePass} modified pages`);
      }
    } finally { await c.stop(); }
  });

  it('RMA 8 MB over 100 Mb/s, there and back: every page at most twice, the state alone in down time, output identical', async () => {
    const w = workload('rma', ['8', '600']);
    const expected = await reference(w);
    const c = await startCluster(2, { names: ['a', 'b'], extraArgs: ['--link-bandwidth', '100mbit'] });
    try {
      const client = ClusterClient.for(c);
      const { outcome, during: ms } = await clusterRun(c, client, w, { node: 'a' }, (pid) => thereAndBack(client, pid));
      assert.equal(outcome.stdout, expected.stdout);
      assert.equal(outcome.exitCode, 0);
      for (const m of ms) {
        console.log(`# rma ${m.from} -> ${m.to}: ${brief(m)}`);
        assert.ok(m.pages.maxSendsPerPage <= 2, `at most two sends per page (${m.pages.maxSendsPerPage})`);
        assert.ok(m.bytes.preparation >= (m.pages.addressSpace - m.pages.zero) * m.pages.pageSize * 0.9, 'the pass carried the address space');
        assert.ok(m.bytes.downtime < 64 * 1024 + m.pages.addressSpace, `down time carries the state alone (${m.bytes.downtime} bytes)`);
        assert.ok(m.pages.resent <= m.modifiedSincePass);
        assert.deepEqual(m.residualDependencies, []);
      }
    } finally { await c.stop(); }
  });
});
