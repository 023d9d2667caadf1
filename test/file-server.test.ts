// File servers (issue 4): flushing (Sprite) and freeze-free (Choices) over real
// daemons. Nodes: h (home: the process's stdio stays there), s (source), d
// (destination), f (--role file-server). The process is moved h -> s by total
// copy first, so the source can be killed without taking its stdio along.
//   - roles: `ferry nodes` shows them; a migration needing a file server fails
//     clearly when there is none, or when --file-server names a node without the role.
//   - flushing: the down time carries no page to the destination, every non-zero
//     page goes to f; the source holds nothing (kill -9 it: the process finishes,
//     output identical, its pages from f); ps and the record name f; the record
//     closes when the process ends.
//   - freeze-free: the down time carries a few pages; the source serves faults
//     until every page is on f, then hands over and lets go (kill -9 it after:
//     output identical).
//   - the source stalled (f takes it for down) when the process ends: f's notice
//     that the store ended still reaches it, and its record closes.
//   - f killed: the process fails with an error naming f.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterClient, eventually, startCluster, type Cluster } from './helpers/cluster.ts';
import { clusterRun, reference } from './helpers/modes.ts';
import { prepareAllVariants, WORKLOADS, type Workload } from './helpers/workloads.ts';
import type { MigrationMetrics } from '../src/migration/index.ts';
import { HEAP_PAGES } from '../src/migration/freeze-free.ts';

const workload = (name: string, args: string[]): Workload => ({ ...WORKLOADS.find((w) => w.name === name)!, args });

async function fourNodes(): Promise<Cluster> {
  const c = await startCluster(3, { names: ['h', 's', 'd'] });
  try {
    await c.addNode('f', { extraArgs: ['--role', 'file-server'] });
  } catch (e) { await c.stop(); throw e; }
  // Roles travel with heartbeats: wait until h knows f's.
  const client = ClusterClient.for(c);
  await eventually(async () => ((await client.call('nodes')).members as { name: string; roles: string[] }[]).find((m) => m.name === 'f')?.roles.includes('file-server'), 10_000, 'f\'s role to be known');
  return c;
}

async function record(client: ClusterClient, id: string): Promise<MigrationMetrics | undefined> {
  return ((await client.call('migrations')).migrations as unknown as MigrationMetrics[]).find((m) => m.id === id);
}

describe('file servers: flushing and freeze-free', { timeout: 900_000 }, () => {
  before(prepareAllVariants);

  it('roles: ferry nodes shows them; no file server, or a named node without the role, is a clear error', async () => {
    const c = await startCluster(2, { names: ['a', 'b'] });
    try {
      const client = ClusterClient.for(c);
      const w = workload('sleeper', ['300', '100']); // killed once checked
      await clusterRun(c, client, w, { node: 'a' }, async (pid) => {
        for (const algorithm of ['flushing', 'freeze-free']) {
          await assert.rejects(client.migrate(pid, 'b', { algorithm }), (e: Error & { code?: string }) =>
            e.code === 'no-file-server' && /needs a file server: no node .* has the file-server role/.test(e.message));
        }
        const f = await c.addNode('f', { extraArgs: ['--role', 'file-server'] });
        void f;
        const listed = await c.ferry(['nodes']);
        assert.match(listed.stdout.toString(), /ROLES/);
        await eventually(async () => /\bf\s+\S+\s+up\s+file-server\b/.test((await c.ferry(['nodes'])).stdout.toString()), 10_000, 'ferry nodes to show f\'s role');
        await assert.rejects(client.migrate(pid, 'b', { algorithm: 'flushing', fileServer: 'a' }), (e: Error & { code?: string }) =>
          e.code === 'no-file-server' && /node a does not have the file-server role/.test(e.message));
        await assert.rejects(client.migrate(pid, 'b', { algorithm: 'total-copy', fileServer: 'f' }), /--file-server applies to flushing and freeze-free/);
        assert.equal((await client.ps()).find((p) => p.pid === pid)?.node, 'a', 'refused migrations left it where it was');
        await client.call('kill', { pid });
      });
    } finally { await c.stop(); }
  });

  for (const algorithm of ['flushing', 'freeze-free'] as const) {
    it(`${algorithm}: pages go to the file server; the source killed afterwards, the process finishes from f's pages, output identical`, async () => {
      const w = workload('rma', ['8', '480']); // ~2.5 s: two migrations land mid-run on a loaded machine (120 once ended first)
      const exp = await reference(w);
      const c = await fourNodes();
      try {
        const client = ClusterClient.for(c);
        let m!: MigrationMetrics;
        const { outcome } = await clusterRun(c, client, w, { node: 'h' }, async (pid) => {
          const first = await client.migrate(pid, 's');
          assert.equal(first.state, 'completed', first.error?.message);
          m = await client.migrate(pid, 'd', { algorithm });
          assert.equal(m.state, 'completed', m.error?.message);
          const ps = (await client.ps()).find((x) => x.pid === pid);
          if (ps) { // it may have ended already on a fast run
            assert.equal(ps.node, 'd');
            assert.deepEqual(ps.residualDependencies, ['f'], 'ps names the file server, not the source');
          }
          assert.match(c.nodes[1]!.log(), algorithm === 'flushing' ? /./ : new RegExp(`no longer holding pages of ${pid.replace('/', '\\/')} for d .*handed over to file server f`));
          await c.kill9(1); // the source: nothing depends on it any more
        });
        assert.equal(outcome.exitCode, exp.exitCode, outcome.stderr);
        assert.equal(outcome.stdout, exp.stdout, 'output identical');
        assert.deepEqual(m.residualDependencies, ['f']);
        assert.equal(m.totalMs, null, 'total time open while the process depends on f');
        assert.ok(m.fileServer && m.fileServer.node === 'f', 'the file server is named');
        assert.ok(m.fileServer.pages > 0 && m.fileServer.bytes >= m.fileServer.pages * m.pages.pageSize, `pages flushed to f (${m.fileServer.pages}, ${m.fileServer.bytes} bytes)`);
        assert.ok(m.fileServer.flushMs !== null, 'the flush completed');
        const ps = m.pages.pageSize;
        if (algorithm === 'flushing') {
          assert.equal(m.pages.sent, 0, 'no page to the destination');
          assert.ok(m.bytes.downtime < 64 * 1024 + m.pages.addressSpace, `down time carries the state alone to the destination (${m.bytes.downtime} bytes)`);
          assert.ok(m.fileServer.flushMs! <= m.downtimeMs!, 'the flush is part of the down time');
        } else {
          assert.ok(m.bytes.downtime < 64 * 1024 + m.pages.addressSpace + (3 + HEAP_PAGES) * ps, `down time carries the state and a few pages (${m.bytes.downtime} bytes)`);
          assert.ok(m.fileServer.flushMs! > m.downtimeMs!, 'the flush ran after the process resumed');
        }
        // The source is dead: its record is gone with it. The file server dropped the store.
        await eventually(async () => /no longer holding pages of .* for d/.test(c.nodes[3]!.log()), 10_000, 'f to drop the store');
        assert.ok(/serving pages of .* to d/.test(c.nodes[3]!.log()));
      } finally { await c.stop(); }
    });
  }

  it('flushing: the record closes when the process ends, with the faults f served', async () => {
    const w = workload('sleeper', ['100', '100']);
    const exp = await reference(w);
    const c = await fourNodes();
    try {
      const client = ClusterClient.for(c);
      const { outcome, during: id } = await clusterRun(c, client, w, { node: 'h' }, async (pid) => {
        const m = await client.migrate(pid, 'd', { algorithm: 'flushing', fileServer: 'f' });
        assert.equal(m.state, 'completed', m.error?.message);
        const refused = await c.ferry(['node', 'stop', 'f']);
        assert.notEqual(refused.exitCode, 0, 'f refuses to stop while d needs its pages');
        assert.match(refused.stderr.toString(), new RegExp(`holds pages of ${pid.replace('/', '\\/')} \\(on d\\)`));
        return m.id;
      });
      assert.equal(outcome.stdout, exp.stdout);
      const done = await eventually(async () => { const r = await record(client, id); return r && r.totalMs !== null && r; }, 20_000, 'the record to close');
      assert.deepEqual(done.residualDependencies, []);
      assert.ok(done.remoteFaults > 0, `remote faults served by f (${done.remoteFaults})`);
    } finally { await c.stop(); }
  });

  it('flushing: a source the file server takes for down (stalled) when the process ends still learns the store ended: its record closes', async () => {
    const w = workload('sleeper', ['40', '100']); // ~4 s: ends while s is stalled
    const exp = await reference(w);
    const c = await fourNodes();
    try {
      const client = ClusterClient.for(c);
      const s = c.nodes[1]!.child;
      const { outcome, during: id } = await clusterRun(c, client, w, { node: 'h' }, async (pid) => {
        const first = await client.migrate(pid, 's'); // the source below is not the home: h keeps the stdio
        assert.equal(first.state, 'completed', first.error?.message);
        const m = await client.migrate(pid, 'd', { algorithm: 'flushing', fileServer: 'f' });
        assert.equal(m.state, 'completed', m.error?.message);
        assert.equal(m.from, 's');
        s.kill('SIGSTOP');
        try {
          await eventually(async () => {
            const members = JSON.parse((await c.ferry(['nodes', '--json'], { via: 3 })).stdout.toString()) as { name: string; state: string }[];
            return members.find((x) => x.name === 's')?.state === 'down';
          }, 10_000, 'f to take the stalled s for down');
          const held = new RegExp(`no longer holding pages of ${pid.replace('/', '\\/')} for d`);
          await eventually(async () => held.test(c.nodes[3]!.log()), 20_000, 'the process to end and f to drop its store');
          await new Promise((r) => setTimeout(r, 300)); // the notice to s is sent (or refused) by now
          assert.doesNotMatch(c.nodes[3]!.log(), /could not tell s that the store/, 'f sent the end of the store to the stalled s');
        } finally { s.kill('SIGCONT'); }
        return m.id;
      });
      assert.equal(outcome.exitCode, exp.exitCode, outcome.stderr);
      assert.equal(outcome.stdout, exp.stdout, 'output identical');
      const done = await eventually(async () => { const r = await record(client, id); return r && r.totalMs !== null && r; }, 20_000, 'the record on s to close once s reads the notice');
      assert.deepEqual(done.residualDependencies, []);
    } finally { c.nodes[1]?.child.kill('SIGCONT'); await c.stop(); }
  });

  it('flushing: the file server killed, the process fails with an error naming it', async () => {
    const w = workload('rma', ['64', '2000']);
    const c = await fourNodes();
    try {
      const client = ClusterClient.for(c);
      const { outcome } = await clusterRun(c, client, w, { node: 'h' }, async (pid) => {
        const m = await client.migrate(pid, 'd', { algorithm: 'flushing' });
        assert.equal(m.state, 'completed', m.error?.message);
        await c.kill9(3);
      });
      assert.notEqual(outcome.exitCode, 0, 'it cannot go on without its pages');
      assert.match(outcome.stderr, /held by node f/, outcome.stderr);
    } finally { await c.stop(); }
  });
});
