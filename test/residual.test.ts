// Residual dependencies (issue 4), over real daemons: demand paging leaves the
// process's pages on the source, which serves them for the life of the process
// (its page server, on any connection from the running node); `ferry migrate`
// returns once the process runs on the destination (total time open), `ferry
// ps` shows the dependency, `ferry migrations` shows it closed when the process
// ends; a process that moves on pulls its pages first; a node refuses to stop
// while others' processes depend on it, unless forced (then they fail, naming it).
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterClient, eventually, startCluster } from './helpers/cluster.ts';
import { clusterRun, reference } from './helpers/modes.ts';
import { prepareAllVariants, WORKLOADS, type Workload } from './helpers/workloads.ts';
import type { MigrationMetrics } from '../src/migration/index.ts';

const workload = (name: string, args: string[]): Workload => ({ ...WORKLOADS.find((w) => w.name === name)!, args });
/** Mostly asleep, touching few pages: its dependency lasts as long as it runs. */
const sleeper = workload('sleeper', ['150', '100']); // outlives a slow setup (compiling the faulting variant) on a loaded machine

async function migrations(client: ClusterClient, pid: string): Promise<MigrationMetrics[]> {
  return ((await client.call('migrations')).migrations as unknown as MigrationMetrics[]).filter((m) => m.pid === pid);
}

describe('residual dependencies', { timeout: 900_000 }, () => {
  before(prepareAllVariants);

  for (const variant of ['copy-on-reference', 'eager-dirty']) {
    it(`demand paging (${variant}): migrate returns at once with the dependency open; ps shows it; it closes when the process ends`, async () => {
      const exp = await reference(sleeper);
      const c = await startCluster(2, { names: ['a', 'b'] });
      try {
        const client = ClusterClient.for(c);
        let pid = '';
        const { outcome, during: m } = await clusterRun(c, client, sleeper, { node: 'a' }, async (p) => {
          pid = p;
          const m = await client.migrate(p, 'b', { algorithm: 'demand-paging', variant });
          assert.equal(m.state, 'completed', m.error?.message);
          assert.equal(m.totalMs, null, 'total time open while the dependency remains');
          assert.deepEqual(m.residualDependencies, ['a']);
          assert.equal(m.variant, variant);
          const ps = (await client.ps()).find((x) => x.pid === p)!;
          assert.equal(ps.node, 'b');
          // Copy-on-reference: the sleeper touches few pages, so it needs a for as long as it runs.
          // (Eager-dirty leaves only its clean non-zero pages there: it may have them all by now.)
          if (variant === 'copy-on-reference') assert.deepEqual(ps.residualDependencies, ['a'], 'ps names the node holding its pages');
          return m;
        });
        assert.equal(outcome.exitCode, exp.exitCode, outcome.stderr);
        assert.equal(outcome.stdout, exp.stdout);
        // (Faults may already have been served when migrate answers: pages.sent counts those too.)
        if (variant === 'copy-on-reference') assert.ok(m.bytes.downtime < 1 << 20, `no page during the down time, the state alone (${m.bytes.downtime} bytes)`);
        else assert.ok(m.pages.sent + m.pages.zero > 0, 'the dirty pages went during the down time');
        const [done] = await eventually(async () => { const ms = await migrations(client, pid); return ms[0]?.totalMs !== null && ms; }, 20_000, 'the dependency to close');
        assert.deepEqual(done!.residualDependencies, []);
        if (variant === 'copy-on-reference') assert.ok(done!.remoteFaults > 0, `remote faults were served (${done!.remoteFaults})`);
        assert.ok(done!.postProcessingMs! > 0 && done!.totalMs! >= done!.downtimeMs!);
        assert.equal(done!.pages.maxSendsPerPage, 1, 'each page sent at most once');
        if (variant === 'copy-on-reference') assert.match(c.nodes[0]!.log(), new RegExp(`no longer holding pages of ${pid.replace('/', '\\/')} for b .*exited`));
      } finally { await c.stop(); }
    });
  }

  it('a process that depends on a node pulls its pages before it moves on (a -> b copy-on-reference, b -> c eager-dirty), output identical', async () => {
    const w = workload('sleeper', ['250', '100', '8']); // 8 MB of cold data, one page of it read a round: most pages are still on a when it moves on
    const exp = await reference(w);
    const c = await startCluster(3, { names: ['a', 'b', 'c'] });
    try {
      const client = ClusterClient.for(c);
      let pid = '';
      const { outcome, during } = await clusterRun(c, client, w, { node: 'a' }, async (p) => {
        pid = p;
        const first = await client.migrate(p, 'b', { algorithm: 'demand-paging' });
        assert.equal(first.state, 'completed', first.error?.message);
        const second = await client.migrate(p, 'c', { algorithm: 'demand-paging', variant: 'eager-dirty' });
        assert.equal(second.state, 'completed', second.error?.message);
        assert.deepEqual(second.residualDependencies, ['b'], 'it depends on b alone now');
        return [first, second];
      });
      assert.equal(outcome.exitCode, 0, outcome.stderr);
      assert.equal(outcome.stdout, exp.stdout);
      const q = pid.replace('/', '\\/');
      const pulled = new RegExp(`${q} pulled its (\\d+) absent pages from a`).exec(c.nodes[1]!.log());
      assert.ok(pulled && Number(pulled[1]) > 0, `b pulled the pages still on a before moving on: ${c.nodes[1]!.log()}`);
      assert.match(c.nodes[0]!.log(), new RegExp(`no longer holding pages of ${q} for b .*pulled every page before moving on`));
      const ms = await eventually(async () => { const ms = await migrations(client, pid); return ms.every((m) => m.totalMs !== null) && ms; }, 20_000, 'both dependencies to close');
      assert.deepEqual(ms.map((m) => m.id).sort(), during.map((m) => m.id).sort());
      for (const m of ms) { assert.deepEqual(m.residualDependencies, []); assert.equal(m.pages.maxSendsPerPage, 1); }
    } finally { await c.stop(); }
  });

  it('a node holding pages refuses `ferry node stop` naming the process; SIGTERM waits for it to end, then stops', async () => {
    const sleeper = workload('sleeper', ['150', '100']); // long enough to outlive setup (compiling the faulting variant) on a loaded machine
    const exp = await reference(sleeper);
    const c = await startCluster(2, { names: ['a', 'b'] });
    try {
      const client = ClusterClient.for(c, 1);
      const { outcome } = await clusterRun(c, client, sleeper, { node: 'a', via: 1 }, async (p) => {
        const m = await client.migrate(p, 'b', { algorithm: 'demand-paging' });
        assert.equal(m.state, 'completed', m.error?.message);
        const refused = await c.ferry(['node', 'stop', 'a'], { via: 1 });
        assert.notEqual(refused.exitCode, 0, 'refused');
        assert.match(refused.stderr.toString(), new RegExp(`holds pages of ${p.replace('/', '\\/')} \\(on b\\)`));
        c.nodes[0]!.child.kill('SIGTERM');
        await eventually(async () => /SIGTERM: not stopping/.test(c.nodes[0]!.log()), 5000, 'the refusal to be logged');
        assert.match(c.nodes[0]!.log(), new RegExp(`${p.replace('/', '\\/')} \\(on b\\) need pages held here`));
        await new Promise((r) => setTimeout(r, 500));
        assert.equal(c.nodes[0]!.child.exitCode, null, 'a still runs');
      });
      assert.equal(outcome.exitCode, 0, outcome.stderr);
      assert.equal(outcome.stdout, exp.stdout, 'the process finished with its pages');
      // Its dependency over, a stops by itself.
      assert.equal(await Promise.race([c.nodes[0]!.exited, new Promise((r) => setTimeout(() => r('still running'), 15_000))]), 0);
      assert.match(c.nodes[0]!.log(), /no process depends on this node any more\): stopping/);
    } finally { await c.stop(); }
  });

  it('`ferry node stop --force` stops it; the process that needed its pages fails naming it', async () => {
    const rma = workload('rma', ['64', '2000']);
    const c = await startCluster(2, { names: ['a', 'b'] });
    try {
      const client = ClusterClient.for(c, 1);
      const { outcome } = await clusterRun(c, client, rma, { node: 'b', via: 1 }, async (p) => {
        // Home b (its stdio stays there); a holds its pages after b -> a (total copy) -> b (demand paging).
        const m1 = await client.migrate(p, 'a');
        assert.equal(m1.state, 'completed', m1.error?.message);
        const m2 = await client.migrate(p, 'b', { algorithm: 'demand-paging' });
        assert.equal(m2.state, 'completed', m2.error?.message);
        const forced = await c.ferry(['node', 'stop', 'a', '--force'], { via: 1 });
        assert.equal(forced.exitCode, 0, forced.stderr.toString());
        assert.match(forced.stderr.toString(), new RegExp(`node a is stopping; these processes need its pages and will fail: ${p.replace('/', '\\/')} \\(on b\\)`));
        assert.equal(await c.nodes[0]!.exited, 0);
      });
      assert.notEqual(outcome.exitCode, 0, 'it cannot go on without its pages');
      assert.match(outcome.stderr, /held by node a/, outcome.stderr);
    } finally { await c.stop(); }
  });
});
