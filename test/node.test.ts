// The node daemon: membership and liveness, remote run with stdio and exit code
// through another node, the cluster-wide process table, kill, bad input, keys.
// Real daemons as separate OS processes on 127.0.0.1, port 0, with a key.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, loadKey, writeKey } from '../src/transport/index.ts';
import { FerryError } from '../src/errors.ts';
import { ferry, ROOT } from './helpers/ferry.ts';
import { ClusterClient, eventually, startCluster, startNode, type Cluster } from './helpers/cluster.ts';
import { call, connectCluster } from '../src/node/client.ts';
import { DROP_AFTER_MS } from '../src/node/membership.ts';
import { QUIET_MS } from '../src/vm/reclaim.ts';

const bin = (name: string) => join(ROOT, 'workloads', 'bin', `${name}.wasm`);

interface Member { name: string; addr: string; state: string; self: boolean }
interface Proc { pid: string; program: string; node: string; home: string; state: string; startedAt: string; memoryBytes: number; migrations: number }

describe('node cluster', { timeout: 300_000 }, () => {
  let c: Cluster;
  before(async () => { c = await startCluster(3, { names: ['a', 'b', 'c'] }); });
  after(async () => { await c?.stop(); });

  async function members(via: number): Promise<Member[]> {
    const r = await c.ferry(['nodes', '--json'], { via });
    assert.equal(r.exitCode, 0, r.stderr.toString());
    return JSON.parse(r.stdout.toString()) as Member[];
  }

  async function ps(via = 0): Promise<Proc[]> {
    const r = await c.ferry(['ps', '--json'], { via });
    assert.equal(r.exitCode, 0, r.stderr.toString());
    return JSON.parse(r.stdout.toString()) as Proc[];
  }

  it('three nodes joining through one member all see each other up', async () => {
    for (let via = 0; via < 3; via++) {
      await eventually(async () => {
        const m = await members(via);
        return m.length === 3 && m.every((x) => x.state === 'up') && m.map((x) => x.name).sort().join() === 'a,b,c';
      }, 8000, `node ${c.nodes[via].name} to list a, b, c up`);
    }
    const m = await members(1);
    assert.equal(m.find((x) => x.self)?.name, 'b');
    const text = await c.ferry(['nodes'], { via: 2 });
    assert.match(text.stdout.toString(), /^NAME\s+ADDRESS\s+STATE/);
  });

  it('runs a program on another node: stdout and exit code as a local run', async () => {
    const local = await ferry(['run', bin('getpid'), '200000']);
    assert.equal(local.exitCode, 0);
    const remote = await c.ferry(['run', '--node', 'b', bin('getpid'), '200000'], { via: 0 });
    assert.equal(remote.exitCode, 0, remote.stderr.toString());
    assert.ok(remote.stdout.equals(local.stdout), 'remote stdout is byte-identical to the local run');
    assert.equal(remote.stderr.toString(), local.stderr.toString());
  });

  it('propagates a non-zero exit code and stderr', async () => {
    const local = await ferry(['run', bin('pageinc'), '0']);
    assert.equal(local.exitCode, 2);
    const remote = await c.ferry(['run', '--node', 'c', bin('pageinc'), '0'], { via: 0 });
    assert.equal(remote.exitCode, 2);
    assert.equal(remote.stderr.toString(), local.stderr.toString());
    assert.ok(remote.stdout.equals(local.stdout));
  });

  it('forwards stdin to the remote process', async () => {
    const input = Buffer.from(Array.from({ length: 200 }, (_, i) => `line ${i} hello ${'y'.repeat(i % 50)}\n`).join(''));
    const local = await ferry(['run', bin('sleeper'), '--echo'], { stdin: input });
    const remote = await c.ferry(['run', '--node', 'b', bin('sleeper'), '--echo'], { stdin: input, via: 2 });
    assert.equal(remote.exitCode, 0, remote.stderr.toString());
    assert.equal(remote.stdout.toString(), local.stdout.toString());
    assert.match(remote.stdout.toString(), /eof after 200 lines/);
  });

  it('runs on the contacted node itself when --node names it', async () => {
    const r = await c.ferry(['run', '--node', 'a', bin('sleeper'), '2', '10'], { via: 0 });
    assert.equal(r.exitCode, 0, r.stderr.toString());
    assert.match(r.stdout.toString(), /tick 2/);
  });

  it('ps lists processes on two nodes with the required fields; kill ends them', async () => {
    const runB = c.ferry(['run', '--node', 'b', bin('sleeper'), '100000', '50'], { via: 0 });
    const runC = c.ferry(['run', '--node', 'c', bin('sleeper'), '100000', '50'], { via: 1 });
    const procs = await eventually(async () => {
      const p = await ps(2);
      return p.filter((x) => x.state === 'running').length >= 2 ? p : undefined;
    }, 20_000, 'two running processes');
    const onB = procs.find((p) => p.node === 'b')!, onC = procs.find((p) => p.node === 'c')!;
    assert.ok(onB && onC, JSON.stringify(procs));
    for (const p of [onB, onC]) {
      assert.match(p.pid, new RegExp(`^${p.node}/\\d+$`));
      assert.equal(p.program, bin('sleeper'));
      assert.equal(p.home, p.node);
      assert.equal(p.migrations, 0);
      assert.ok(p.memoryBytes > 0);
      assert.ok(!Number.isNaN(Date.parse(p.startedAt)));
    }
    const text = await c.ferry(['ps'], { via: 1 });
    assert.match(text.stdout.toString(), new RegExp(onB.pid.replace('/', '\\/')));

    const k1 = await c.ferry(['kill', onB.pid], { via: 0 });
    assert.equal(k1.exitCode, 0, k1.stderr.toString());
    const k2 = await c.ferry(['kill', onC.pid], { via: 0 });
    assert.equal(k2.exitCode, 0, k2.stderr.toString());
    const [rb, rc] = await Promise.all([runB, runC]);
    assert.equal(rb.exitCode, 137);
    assert.equal(rc.exitCode, 137);
    assert.match(rb.stderr.toString(), /killed/);
    assert.match(rb.stdout.toString(), /^sleeper: 100000 rounds/);
    const after = await ps(0);
    assert.ok(!after.some((p) => p.pid === onB.pid || p.pid === onC.pid), JSON.stringify(after));

    const again = await c.ferry(['kill', onB.pid]);
    assert.equal(again.exitCode, 1);
    assert.match(again.stderr.toString(), /no process .* already been killed/);
  });

  it('a node the others take for down (stalled past DOWN_AFTER_MS): its process is still located, one elsewhere is located and killed at once, the exit of one whose home it is reaches it; errors name who did not answer', async () => {
    const run = c.ferry(['run', '--node', 'b', bin('sleeper'), '100000', '50'], { via: 0 });
    const runC = c.ferry(['run', '--node', 'c', bin('sleeper'), '100000', '50'], { via: 0 });
    const procs = await eventually(async () => { const p = await ps(0); return p.filter((x) => x.state === 'running').length >= 2 ? p : undefined; }, 20_000, 'processes on b and c');
    const onB = procs.find((p) => p.node === 'b')!, onC = procs.find((p) => p.node === 'c')!;
    assert.ok(onB && onC, JSON.stringify(procs));
    // A third one starts on b and moves to c: its pid names b, the node that will stall.
    const runMoved = c.ferry(['run', '--node', 'b', bin('sleeper'), '100000', '50'], { via: 0 });
    const moved = await eventually(async () => (await ps(0)).find((x) => x.node === 'b' && x.pid !== onB.pid && x.state === 'running'), 20_000, 'a second process on b');
    const mv = await c.ferry(['migrate', moved.pid, '--to', 'c', '--json'], { via: 0 });
    assert.equal(mv.exitCode, 0, mv.stderr.toString());
    const b = c.nodes[1].child;
    const conn = await connectCluster({ addr: c.nodes[0].addr, key: loadKey(c.keyFile) });
    let located: Promise<Record<string, unknown>> | undefined;
    b.kill('SIGSTOP');
    try {
      await eventually(async () => (await members(0)).find((x) => x.name === 'b')?.state === 'down', 10_000, 'a to mark the stalled b down');
      // Stalled throughout: no "no such process" as if it had ended, but who could not be asked.
      await assert.rejects(call(conn, 'locate', { pid: onB.pid }), (e: Error) => {
        assert.match(e.message, new RegExp(`no process ${onB.pid} in the cluster \\(b did not answer: `));
        return true;
      });
      // A process elsewhere is found at once: the first member that has it answers, the
      // stalled one is not waited for (it would be for the 5 s of a peer query).
      const t0 = Date.now();
      assert.equal((await call(conn, 'locate', { pid: onC.pid })).node, 'c');
      assert.ok(Date.now() - t0 < 4000, `located on c in ${Date.now() - t0} ms while b stalled`);
      // And killed at once, though its pid names the stalled b (asked first, b cost 5 s).
      const t1 = Date.now();
      assert.equal((await call(conn, 'kill', { pid: moved.pid })).node, 'c');
      assert.ok(Date.now() - t1 < 4000, `killed on c in ${Date.now() - t1} ms while b stalled`);
      // Back before the answer: a still takes b for down, yet finds the process there.
      assert.equal((await members(0)).find((x) => x.name === 'b')?.state, 'down');
      located = call(conn, 'locate', { pid: onB.pid });
      located.catch(() => {});
      await new Promise((r) => setTimeout(r, 300));
    } finally { b.kill('SIGCONT'); }
    try {
      const r = await located!;
      assert.equal(r.node, 'b');
      assert.equal(r.addr, c.nodes[1].addr);
    } finally { conn.destroy(); }
    const k = await c.ferry(['kill', onB.pid], { via: 0 });
    assert.equal(k.exitCode, 0, k.stderr.toString());
    const kc = await c.ferry(['kill', onC.pid], { via: 0 });
    assert.equal(kc.exitCode, 0, kc.stderr.toString());
    for (const r of await Promise.all([run, runC, runMoved])) assert.equal(r.exitCode, 137, r.stderr.toString());
  });

  it('unknown pid, unknown node, missing cluster: clear errors, non-zero exit', async () => {
    const k = await c.ferry(['kill', 'b/99999']);
    assert.equal(k.exitCode, 1);
    assert.match(k.stderr.toString(), /no process b\/99999/);
    const k2 = await c.ferry(['kill', 'nonsense']);
    assert.equal(k2.exitCode, 1);
    assert.match(k2.stderr.toString(), /no process nonsense/);
    const r = await c.ferry(['run', '--node', 'zz', bin('getpid'), '10'], { timeoutMs: 20_000 });
    assert.equal(r.exitCode, 1);
    assert.match(r.stderr.toString(), /no node named zz/);
    const none = await ferry(['ps'], { env: { FERRY_CLUSTER: '', FERRY_KEY_FILE: '' } });
    assert.equal(none.exitCode, 1);
    assert.match(none.stderr.toString(), /--cluster/);
  });

  it('a pid that moved and then ended: its home says how it ended, not where it went', async () => {
    // Started on a (its home), moved to c, ended there: a's table only knows it left for c,
    // its home session saw the exit. Without the home's record: "it has moved to c".
    const run = c.ferry(['run', '--node', 'a', bin('sleeper'), '100000', '50'], { via: 0 });
    const p = await eventually(async () => (await ps(0)).find((x) => x.node === 'a' && x.state === 'running'), 20_000, 'a process on a');
    const mv = await c.ferry(['migrate', p.pid, '--to', 'c', '--json'], { via: 0 });
    assert.equal(mv.exitCode, 0, mv.stderr.toString());
    const k = await c.ferry(['kill', p.pid], { via: 1 });
    assert.equal(k.exitCode, 0, k.stderr.toString());
    assert.equal((await run).exitCode, 137);
    const again = await c.ferry(['migrate', p.pid, '--to', 'b'], { via: 0 });
    assert.equal(again.exitCode, 1);
    assert.match(again.stderr.toString(), new RegExp(`no process ${p.pid} in the cluster \\(it has already been killed on c\\)`));
    // One that ends by itself (100 rounds of 50 ms) after its move: its exit code.
    const short = c.ferry(['run', '--node', 'a', bin('sleeper'), '100', '50'], { via: 0 });
    const q = await eventually(async () => (await ps(0)).find((x) => x.node === 'a' && x.pid !== p.pid && x.state === 'running'), 20_000, 'a second process on a');
    const mv2 = await c.ferry(['migrate', q.pid, '--to', 'c', '--json'], { via: 0 });
    assert.equal(mv2.exitCode, 0, mv2.stderr.toString());
    assert.equal((await short).exitCode, 0);
    const late = await c.ferry(['migrate', q.pid, '--to', 'b'], { via: 0 });
    assert.match(late.stderr.toString(), new RegExp(`no process ${q.pid} in the cluster \\(it has already ended on c \\(exit code 0\\)\\)`));
    // One that never moved, asked through another node: migrate, checkpoint and kill alike say
    // how it ended (the lookup used to know only the asking node's records: "no process b/N").
    const stay = c.ferry(['run', '--node', 'b', bin('sleeper'), '40', '50'], { via: 0 });
    const s = await eventually(async () => (await ps(0)).find((x) => x.node === 'b' && x.state === 'running'), 20_000, 'a process on b');
    assert.equal((await stay).exitCode, 0);
    for (const args of [['migrate', s.pid, '--to', 'c'], ['checkpoint', s.pid, '-o', join(c.dir, 'never.img')], ['kill', s.pid]]) {
      const r = await c.ferry(args, { via: 2 });
      assert.equal(r.exitCode, 1, args[0]);
      assert.match(r.stderr.toString(), new RegExp(`no process ${s.pid} in the cluster \\(it has already ended on b \\(exit code 0\\)\\)`), args[0]);
    }
  });

  it('a node started with the name of a member that is up is refused, and exits', async () => {
    const r = await c.ferry(['node', 'start', '--name', 'b', '--listen', '127.0.0.1:0', '--key-file', c.keyFile, '--join', c.nodes[0].addr], { timeoutMs: 20_000 });
    assert.equal(r.signal, null, 'it exited by itself (it used to keep running, its refused connection open)');
    assert.equal(r.exitCode, 1);
    assert.match(r.stderr.toString(), /cannot join the cluster: .*a node named b is already up/);
    assert.equal((await members(0)).find((m) => m.name === 'b')?.addr, c.nodes[1].addr, 'b is still the one that was there');
  });

  it('a node survives malformed requests', async () => {
    const addr = c.nodes[1].addr;
    const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];
    const conn = await connect(host, port, { key: loadKey(c.keyFile), node: 'fuzzer', role: 'cli' });
    try {
      const bad = [
        {}, { method: 42 }, { method: 'nope' }, { method: 'run' }, { method: 'run', session: 's', program: 'x', sha256: 'zz' },
        { method: 'run', session: 's', program: 'x', sha256: 'a'.repeat(64), args: 'not-a-list' },
        { method: 'run', session: 's', program: 'x', sha256: 'a'.repeat(64) }, // no bytes, unknown module
        { method: 'kill' }, { method: 'join', name: 'x', addr: 'y' },
      ];
      for (const h of bad) {
        await assert.rejects(conn.request('REQUEST', h), (e: unknown) => e instanceof FerryError && e.message.length > 0, JSON.stringify(h));
      }
      // Bytes that are not a module: a clear error.
      const junk = Buffer.from('not wasm at all');
      const { sha256 } = await import('../src/vm/module-meta.ts');
      await assert.rejects(conn.request('REQUEST', { method: 'run', session: 's2', program: 'junk.wasm', sha256: sha256(junk) }, junk), /not a valid WebAssembly module/);
      await conn.send('PROC_INPUT', { session: 'nobody' }, Buffer.from('x'));
      await conn.send('PROC_OUTPUT', { session: 7 }, Buffer.from('x'));
      await conn.send('HEARTBEAT', { node: 42 });
      // Dial-back is for nodes (a client is not dialled), with a token; an unasked-for DIALED_BACK closes that connection.
      await assert.rejects(conn.request('DIAL_BACK', { token: 't' }), (e: unknown) => e instanceof FerryError && e.code === 'forbidden');
      await assert.rejects(conn.request('DIAL_BACK', { token: 42 }), (e: unknown) => e instanceof FerryError && e.code === 'bad-request');
      const stray = await connect(host, port, { key: loadKey(c.keyFile), node: 'fuzzer', role: 'node' });
      await stray.send('DIALED_BACK', { token: 'never-asked' });
      assert.equal(await stray.closed.then((e) => e?.code ?? 'closed'), 'closed');
      const ok = await conn.request('REQUEST', { method: 'nodes' });
      assert.equal((ok.header.members as unknown[]).length, 3);
    } finally { conn.destroy(); }
  });

  it('a client or a node with the wrong key is refused', async () => {
    const wrong = join(c.dir, 'wrong.key');
    writeKey(wrong);
    const r = await ferry(['nodes'], { env: { FERRY_CLUSTER: c.nodes[0].addr, FERRY_KEY_FILE: wrong } });
    assert.equal(r.exitCode, 1);
    assert.match(r.stderr.toString(), /key/);
    const nokey = await ferry(['nodes'], { env: { FERRY_CLUSTER: c.nodes[0].addr, FERRY_KEY_FILE: '' } });
    assert.equal(nokey.exitCode, 1);
    await assert.rejects(startNode({ name: 'intruder', keyFile: wrong, dataDir: join(c.dir, 'intruder'), join: [c.nodes[0].addr] }), /cannot join/);
    const m = await members(0);
    assert.ok(!m.some((x) => x.name === 'intruder'));
  });

  it('a killed node is marked down by the others within a few seconds; the terminal of a process lost with it hears so once it has been silent for DROP_AFTER_MS', async () => {
    // Home a, moved to c: only a's home session could tell its terminal (it waited for good).
    const run = c.ferry(['run', '--node', 'a', bin('sleeper'), '100000', '50'], { via: 0, timeoutMs: 60_000 });
    const p = await eventually(async () => (await ps(0)).find((x) => x.node === 'a' && x.state === 'running'), 20_000, 'a process on a');
    const mv = await c.ferry(['migrate', p.pid, '--to', 'c', '--json'], { via: 0 });
    assert.equal(mv.exitCode, 0, mv.stderr.toString());
    await c.kill9(2);
    const t0 = Date.now();
    for (const via of [0, 1]) {
      await eventually(async () => {
        const m = await members(via);
        return m.find((x) => x.name === 'c')?.state === 'down' && m.filter((x) => x.state === 'up').length === 2;
      }, 6000, `node ${c.nodes[via].name} to mark c down`);
    }
    const p2 = await ps(0);
    assert.ok(Array.isArray(p2));
    const lost = await run;
    assert.equal(lost.exitCode, 1);
    assert.match(lost.stderr.toString(), new RegExp(`^ferry: node c, where ${p.pid} ran, has been silent for 1\\d s: taken for lost`, 'm'));
    assert.ok(Date.now() - t0 >= DROP_AFTER_MS - 1000, 'not before it was silent for DROP_AFTER_MS');
  });

  it('a node that stops is marked left, and its daemon exits 0; the terminal of a process it ran hears why it was killed', async () => {
    const onB = c.ferry(['run', '--node', 'b', bin('sleeper'), '100000', '50'], { via: 0 });
    await eventually(async () => (await ps(0)).find((x) => x.node === 'b' && x.state === 'running'), 20_000, 'a process on b');
    c.nodes[1].child.kill('SIGTERM');
    assert.equal(await c.nodes[1].exited, 0);
    const ended = await onB;
    assert.equal(ended.exitCode, 137);
    assert.match(ended.stderr.toString(), /^ferry: process b\/\d+ was killed: node b stopped \(SIGTERM\)$/m);
    const m = await eventually(async () => { const m = await members(0); return m.find((x) => x.name === 'b')?.state === 'left' ? m : undefined; }, 5000, 'b to be left');
    assert.ok(m);
    // A migration to it, or to c (killed above, down), says so; the process runs on where it was.
    const run = c.ferry(['run', '--node', 'a', bin('sleeper'), '100000', '50'], { via: 0 });
    const p = await eventually(async () => (await ps(0)).find((x) => x.node === 'a' && x.state === 'running'), 20_000, 'a process on a');
    const toB = await c.ferry(['migrate', p.pid, '--to', 'b'], { via: 0 });
    assert.equal(toB.exitCode, 1);
    assert.match(toB.stderr.toString(), /node b has left the cluster/);
    const toC = await c.ferry(['migrate', p.pid, '--to', 'c'], { via: 0 });
    assert.equal(toC.exitCode, 1);
    assert.match(toC.stderr.toString(), /node c is down \(silent for [\d.]+ s\): /);
    assert.deepEqual((await ps(0)).filter((x) => x.pid === p.pid).map((x) => [x.node, x.state]), [['a', 'running']]);
    assert.equal((await c.ferry(['kill', p.pid], { via: 0 })).exitCode, 0);
    assert.equal((await run).exitCode, 137);
    // So does a run there.
    const runB = await c.ferry(['run', '--node', 'b', bin('getpid'), '10'], { via: 0, timeoutMs: 20_000 });
    assert.equal(runB.exitCode, 1);
    assert.match(runB.stderr.toString(), /node b has left the cluster/);
    const runC = await c.ferry(['run', '--node', 'c', bin('getpid'), '10'], { via: 0, timeoutMs: 20_000 });
    assert.equal(runC.exitCode, 1);
    assert.match(runC.stderr.toString(), /node c is down \(silent for [\d.]+ s\)/);
  });

  it('a node with a shaped link (--link-bandwidth, --link-latency) joins and runs programs', async () => {
    await c.addNode('d', { extraArgs: ['--link-bandwidth', '100mbit', '--link-latency', '1ms'] });
    await eventually(async () => (await members(0)).find((x) => x.name === 'd')?.state === 'up', 5000, 'd up');
    const local = await ferry(['run', bin('getpid'), '50000']);
    const r = await c.ferry(['run', '--node', 'd', bin('getpid'), '50000'], { via: 0 });
    assert.equal(r.exitCode, 0, r.stderr.toString());
    assert.ok(r.stdout.equals(local.stdout));
  });
});

describe('a node whose own event loop stalls', { timeout: 120_000 }, () => {
  it('judges no member down for its own stall (the others may, then see it up); its migration completes', async () => {
    // b blocks its whole loop for 3 s as MIG_SETUP arrives (FERRY_FAULTS stall): past DOWN_AFTER_MS,
    // its heartbeat timer runs before it has read a's heartbeats of the stall.
    const c = await startCluster(2, { names: ['a', 'b'], env: { b: { FERRY_FAULTS: 'dest-setup:stall=3000' } } });
    try {
      const client = ClusterClient.for(c);
      const run = c.ferry(['run', '--node', 'a', bin('sleeper'), '200', '50'], { via: 0 });
      const pid = await client.waitRunning(bin('sleeper'));
      const m = await client.migrate(pid, 'b');
      assert.equal(m.state, 'completed', m.error?.message);
      const r = await run;
      assert.equal(r.exitCode, 0, r.stderr.toString());
      const logB = c.nodes[1].log();
      assert.match(logB, /FAULT dest-setup: stall=3000/);
      assert.match(logB, /heartbeat timer ran \d+ ms after the last one/);
      assert.doesNotMatch(logB, /node a at \S+ is down/);
      assert.match(c.nodes[0].log(), /node b at \S+ is down/, 'a saw b silent for the stall');
      await eventually(async () => ((await client.call('nodes')).members as Member[]).find((x) => x.name === 'b')?.state === 'up', 5000, 'a to see b up again');
    } finally { await c.stop(); }
  });
});

describe('guest priority', { timeout: 120_000 }, () => {
  /** Nice value and CPU ticks of each thread of a process (Linux /proc/PID/task/TID/stat). */
  function threads(pid: number): Map<number, { nice: number; ticks: number }> {
    const out = new Map<number, { nice: number; ticks: number }>();
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      let stat: string;
      try { stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8'); } catch { continue; } // a thread that just ended
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // from field 3 (state) on
      out.set(Number(tid), { nice: Number(f[16]), ticks: Number(f[11]) + Number(f[12]) });
    }
    return out;
  }

  /** The thread of `pid` that used the most CPU over a second: a busy guest's. */
  async function busiest(pid: number): Promise<{ tid: number; nice: number }> {
    const before = threads(pid);
    await new Promise((r) => setTimeout(r, 1000));
    let best = { tid: 0, nice: NaN, used: -1 };
    for (const [tid, t] of threads(pid)) {
      const used = t.ticks - (before.get(tid)?.ticks ?? t.ticks);
      if (used > best.used) best = { tid, nice: t.nice, used };
    }
    return best;
  }

  it('a node runs its programs 10 nice levels below itself (--guest-nice; 0: at its own priority)', async () => {
    const c = await startCluster(1, { names: ['a'] });
    try {
      await c.addNode('b', { extraArgs: ['--guest-nice', '0'] });
      const client = ClusterClient.for(c);
      for (const [i, node, want] of [[0, 'a', 10], [1, 'b', 0]] as const) {
        const run = c.ferry(['run', '--node', node, bin('getpid'), '100000000'], { via: 0 });
        const pid = await client.waitRunning(bin('getpid'));
        const daemon = c.nodes[i].child.pid!;
        const guest = await busiest(daemon);
        assert.notEqual(guest.tid, daemon, `the busiest thread of node ${node} is a guest's, not its main thread`);
        assert.equal(guest.nice, want, `node ${node}'s guest runs at nice ${want}`);
        assert.equal(threads(daemon).get(daemon)?.nice, 0, `node ${node}'s main thread keeps its priority`);
        await client.call('kill', { pid });
        assert.notEqual((await run).exitCode, 0);
      }
      const bad = await ferry(['node', 'start', '--name', 'x', '--listen', '127.0.0.1:0', '--guest-nice', '20']);
      assert.equal(bad.exitCode, 1);
      assert.match(bad.stderr.toString(), /--guest-nice.*'20' is invalid\. give a whole number from 0 to 19/);
    } finally { await c.stop(); }
  });
});

describe('memory of processes that left', { timeout: 120_000 }, () => {
  const rssBytes = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;
  const MiB = 1 << 20;

  it('goes back to the system once a large process has moved away or ended and the node has been quiet for QUIET_MS, not at some later collection', async () => {
    const c = await startCluster(2, { names: ['a', 'b'] });
    try {
      const client = ClusterClient.for(c);
      const [a, b] = c.nodes.map((n) => n.child.pid!) as [number, number];
      const mib = (n: number) => `${(n / MiB).toFixed(0)} MiB`;
      const baseA = rssBytes(a), baseB = rssBytes(b);
      const run = c.ferry(['run', '--node', 'a', bin('rma'), '128', '1000000'], { via: 0 });
      const pid = await client.waitRunning(bin('rma'));
      await eventually(async () => rssBytes(a) > baseA + 120 * MiB, 30_000, `a to hold rma's 128 MiB (it held ${mib(baseA)} before)`);
      assert.equal((await client.migrate(pid, 'b')).state, 'completed');
      assert.ok(rssBytes(b) > baseB + 120 * MiB, `b holds the process's memory now (${mib(rssBytes(b))}, ${mib(baseB)} before)`);
      await eventually(async () => rssBytes(a) < baseA + 50 * MiB, QUIET_MS + 2000, `a's memory to be within 50 MiB of the ${mib(baseA)} it held before the process ran there`);
      await client.call('kill', { pid });
      assert.notEqual((await run).exitCode, 0);
      await eventually(async () => rssBytes(b) < baseB + 50 * MiB, QUIET_MS + 2000, `b's memory to be within 50 MiB of the ${mib(baseB)} it held before the process came`);
    } finally { await c.stop(); }
  });
});
