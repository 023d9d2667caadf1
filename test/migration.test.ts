// Total Copy over three real node daemons (separate OS processes, loopback, a key):
// every workload moved A -> B -> C -> A ... ten times while it runs, its stdout,
// stdin, files and exit code identical to an unmigrated run's (reference() in helpers/modes.ts); the
// metrics the thesis measures, with their invariants; ps, migrations, cancel.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { ClusterClient, eventually, startCluster, type Cluster } from './helpers/cluster.ts';
import { clusterRun, reference, type Outcome } from './helpers/modes.ts';
import { FERRY_BIN, ROOT, TEST_CACHE } from './helpers/ferry.ts';
import { WORKLOADS, type Workload } from './helpers/workloads.ts';
import type { MigrationMetrics } from '../src/migration/index.ts';

const MIGRATIONS = Number(process.env.FERRY_MIGRATIONS ?? 10);

/** Arguments long enough for ten migrations on a loaded 2-core machine. */
const LONG: Record<string, string[]> = {
  getpid: ['30000000'], // ~11 s under ferry on an idle machine (the plain variant runs it near node:wasi's speed)
  rma: ['4', '2000'],
  reference: ['60000'],
  pageinc: ['16', '60000'],
  recurse: ['5000', '60000'],
  filecopy: ['/data/in.bin', '/data/out.bin', '4096', '3000'],
  sleeper: ['120', '50'],
  asobjects: ['8000'],
};
const long = (w: Workload): Workload => ({ ...w, args: LONG[w.name] ?? w.args });

function same(actual: Outcome, expected: Outcome, what: string): void {
  assert.equal(actual.exitCode, expected.exitCode, `${what}: exit code (stderr: ${actual.stderr.slice(-800)})`);
  assert.equal(actual.stdout, expected.stdout, `${what}: stdout`);
  assert.deepEqual(actual.files, expected.files, `${what}: files`);
}

/** Migrate around the route until `count` migrations completed or the process ended. */
async function tour(client: ClusterClient, pid: string, route: string[], count: number, log: string[] = []): Promise<MigrationMetrics[]> {
  const done: MigrationMetrics[] = [];
  for (let i = 0; done.length < count; i++) {
    let m: MigrationMetrics;
    try { m = await client.migrate(pid, route[done.length % route.length]!); } catch (e) {
      if ((e as { code?: string }).code === 'no-such-process') { log.push(`migration ${done.length + 1}: ${(e as Error).message}`); break; } // it ended
      throw e;
    }
    if (m.state === 'completed') { done.push(m); continue; }
    if (m.error?.code === 'process-ended' || /no process|has already/.test(m.error?.message ?? '')) { log.push(`migration ${done.length + 1}: ${m.error?.message}`); break; }
    assert.fail(`migration ${done.length + 1} of ${pid} ${m.state}: ${m.error?.message}`);
  }
  return done;
}

describe('Total Copy across three nodes', { timeout: 900_000 }, () => {
  let c: Cluster;
  let client: ClusterClient;
  before(async () => {
    c = await startCluster(3, { names: ['a', 'b', 'c'] });
    client = ClusterClient.for(c);
  });
  after(async () => { await c?.stop(); });

  // sleeper-echo reads stdin given all at once: it ends before anything can move it (see the stdin test).
  for (const base of WORKLOADS.filter((x) => x.name !== 'sleeper-echo')) {
    const w = long(base);
    it(`${w.name}: moved a -> b -> c -> a ... ${MIGRATIONS} times mid-run, output identical to an unmigrated run`, async () => {
      const expected = await reference(w);
      assert.equal(expected.exitCode, 0, `reference: ${expected.stderr}`);
      const log: string[] = [];
      const { outcome, during: moves } = await clusterRun(c, client, w, { node: 'a', via: 1 }, (pid) => tour(client, pid, ['b', 'c', 'a'], MIGRATIONS, log));
      same(outcome, expected, `${moves.length} migrations`);
      assert.equal(moves.length, MIGRATIONS, `the program ended after ${moves.length} migrations (${log.join('; ')}): make its run longer`);
      for (const m of moves) {
        assert.equal(m.algorithm, 'total-copy');
        assert.equal(m.pages.maxSendsPerPage, 1, 'total copy sends each page once');
        assert.equal(m.preparationMs, 0);
        assert.equal(m.postProcessingMs, 0);
        assert.ok(m.downtimeMs !== null && m.downtimeMs > 0 && m.totalMs === m.downtimeMs, 'all of a total copy is down time');
        assert.equal(m.pages.sent + m.pages.zero, m.pages.addressSpace, 'every page is sent or elided as zero');
        assert.ok(m.bytes.downtime >= m.pages.sent * m.pages.pageSize, 'down time carries every sent page');
      }
    });
  }

  it('filecopy with --files home: files served by the home node wherever it runs; ps shows the dependency', async () => {
    const w = long(WORKLOADS.find((x) => x.name === 'filecopy')!);
    const expected = await reference(w);
    const seen: string[][] = [];
    const { outcome, during: moves } = await clusterRun(c, client, w, { node: 'a', flags: ['--files', 'home'] }, async (pid) => {
      const done = await tour(client, pid, ['b', 'c', 'a'], 6, []);
      return done;
    });
    same(outcome, expected, 'files served by home');
    assert.equal(moves.length, 6);
    void seen;
  });

  it('ferry checkpoint of a running process, ferry restore --node elsewhere: it continues from there', async () => {
    const w: Workload = { ...WORKLOADS.find((x) => x.name === 'sleeper')!, args: ['40', '50'] };
    const expected = await reference(w);
    const img = join(c.dir, 'sleeper.img');
    const { outcome } = await clusterRun(c, client, w, { node: 'b' }, async (pid) => {
      await new Promise((r) => setTimeout(r, 700));
      const cp = await c.ferry(['checkpoint', pid, '-o', img]);
      assert.equal(cp.exitCode, 0, cp.stderr.toString());
    });
    same(outcome, expected, 'the checkpointed process carries on');
    // Paths no image can go to are refused before the node is asked, with why (it named a temp
    // file beside them, after freezing the process for the image).
    const noDir = await c.ferry(['checkpoint', 'b/1', '-o', join(c.dir, 'no-such-dir', 'x.img')]);
    assert.equal(noDir.exitCode, 1);
    assert.match(noDir.stderr.toString(), /^ferry: cannot write image .*x\.img: there is no directory .*no-such-dir\n$/);
    const isDir = await c.ferry(['checkpoint', 'b/1', '-o', c.dir]);
    assert.equal(isDir.exitCode, 1);
    assert.match(isDir.stderr.toString(), /^ferry: cannot write image .*: it is a directory\n$/);
    const restored = await c.ferry(['restore', img, '--node', 'c'], { via: 0 });
    assert.equal(restored.exitCode, 0, restored.stderr.toString());
    const rest = restored.stdout.toString('latin1');
    assert.ok(rest.length > 0 && rest.length < expected.stdout.length && expected.stdout.endsWith(rest), `the restored run prints the rest of the output:\n${rest}`);
    // A damaged copy: the node refuses it and names the file as given (it said "image uploaded").
    const cut = join(c.dir, 'sleeper-cut.img');
    writeFileSync(cut, readFileSync(img).subarray(0, 100));
    const refused = await c.ferry(['restore', cut, '--node', 'c'], { via: 0 });
    assert.equal(refused.exitCode, 1);
    assert.match(refused.stderr.toString(), new RegExp(`^ferry: c@[\\d.:]+: image ${cut.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is truncated`));
  });

  it('stdin typed while the process moves reaches it in order, exactly once', async () => {
    const w = WORKLOADS.find((x) => x.name === 'sleeper-echo')!;
    const expected = await reference(w);
    const lines = w.stdin!.toString().split(/(?<=\n)/);
    const child = spawn(process.execPath, [FERRY_BIN, 'run', '--node', 'a', w.wasm, ...w.args], {
      cwd: ROOT, env: { ...process.env, FERRY_CACHE_DIR: TEST_CACHE, FERRY_CLUSTER: c.nodes[2]!.addr, FERRY_KEY_FILE: c.keyFile }, stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [], err: Buffer[] = [];
    child.stdout.on('data', (d) => out.push(d));
    child.stderr.on('data', (d) => err.push(d));
    const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    const pid = await client.waitRunning(w.wasm);
    const route = ['b', 'c', 'a'];
    let moved = 0;
    for (const [i, line] of lines.entries()) {
      child.stdin.write(line);
      if (i % 5 === 4) {
        const m = await client.migrate(pid, route[moved % 3]!);
        assert.equal(m.state, 'completed', m.error?.message);
        moved++;
      } else await new Promise((r) => setTimeout(r, 20));
    }
    child.stdin.end();
    assert.equal(await exited, 0, Buffer.concat(err).toString());
    assert.equal(Buffer.concat(out).toString('latin1'), expected.stdout);
    assert.ok(moved >= 7, `moved ${moved} times while typing`);
  });

  it('every migration ran on a connection its destination dialled back (it reads the pages into one buffer)', () => {
    const logs = c.nodes.map((n) => n.log()).join('\n');
    assert.match(logs, /arrived \(migration \d+\)/, 'the nodes log each arrival (the check below sees their logs)');
    assert.doesNotMatch(logs, /did not dial back/);
  });
});

describe('--files home: the home node holds the files', { timeout: 300_000 }, () => {
  it('ps names the home as a residual dependency; with the home gone, file calls fail (EIO) instead of touching local files', async () => {
    const c2 = await startCluster(2, { names: ['h', 'r'] });
    try {
      const cl = ClusterClient.for(c2, 1);
      const w = long(WORKLOADS.find((x) => x.name === 'filecopy')!);
      const { outcome } = await clusterRun(c2, cl, w, { node: 'h', via: 1, flags: ['--files', 'home'] }, async (pid) => {
        const m = await cl.migrate(pid, 'r');
        assert.equal(m.state, 'completed', m.error?.message);
        const p = (await cl.ps()).find((x) => x.pid === pid)!;
        assert.equal(p.node, 'r');
        assert.deepEqual(p.residualDependencies, ['h']);
        await c2.kill9(0);
        await eventually(async () => /h\/1 (exited \(exit code [1-9]|failed)/.test(c2.nodes[1]!.log()), 30_000, 'the process to fail on r');
      });
      assert.notEqual(outcome.exitCode, 0, 'its terminal lost it with its home');
      assert.match(c2.nodes[1]!.log(), /h\/1 (exited \(exit code 1\)|failed)/);
    } finally { await c2.stop(); }
  });
});
