// Migrations on crowded nodes: K busy guests (rma, random writes everywhere) on node a of a
// two-node cluster on loopback (TLS-PSK), more than the machine has cores; every round moves
// all of them at once to the other node. Once with the guests at their node's priority
// (--guest-nice 0), once 10 nice levels below it (the default, src/vm/guest-priority.ts),
// alternately, each setting on a cluster of its own. Printed: each migration's down time and
// total (median, 90th percentile, max) and setup (the destination preparing the program), and
// the ratios of the two settings measured in the same run.
//
// usage: node --import tsx bench/crowded.ts [K] [MB] [rounds] [pairs]   (default 8 guests of
//        8 MB, 4 rounds, 2 pairs of runs)
import { availableParallelism } from 'node:os';
import { ClusterClient, eventually, startCluster } from '../test/helpers/cluster.ts';
import type { MigrationMetrics } from '../src/migration/index.ts';
import { f1, f2, median, percentile, table, wasmPath } from './util.ts';

const [k = 8, mb = 8, rounds = 4, pairs = 2] = process.argv.slice(2).map(Number);
if (![k, mb, rounds, pairs].every((x) => Number.isInteger(x) && x > 0)) throw new Error('usage: crowded.ts [K] [MB] [rounds] [pairs] (positive whole numbers)');
const NICES = [0, 10];
const MiB = 1 << 20;

/** Every migration of K guests moved `rounds` times, all at once each round, on a fresh cluster. */
async function crowd(nice: number): Promise<MigrationMetrics[]> {
  const c = await startCluster(2, { names: ['a', 'b'], extraArgs: ['--guest-nice', String(nice)] });
  try {
    const client = ClusterClient.for(c);
    const wasm = wasmPath('rma');
    const runs = Array.from({ length: k }, () => c.ferry(['run', '--node', 'a', wasm, String(mb), '1000000'], { via: 1, timeoutMs: 3_600_000 }));
    for (const r of runs) r.catch(() => {});
    const pids = await eventually(async () => {
      const ps = (await client.ps()) as { pid: string; state: string; memoryBytes?: number }[];
      const up = ps.filter((p) => p.state === 'running' && (p.memoryBytes ?? 0) >= mb * MiB);
      return up.length === k ? up.map((p) => p.pid) : undefined;
    }, 120_000, `${k} guests running with their memory touched`);
    const all: MigrationMetrics[] = [];
    for (let r = 0; r < rounds; r++) {
      const ms = await Promise.all(pids.map((pid) => client.migrate(pid, r % 2 === 0 ? 'b' : 'a')));
      for (const m of ms) if (m.state !== 'completed') throw new Error(`migration of ${m.pid} ${m.state}: ${m.error?.message}`);
      all.push(...ms);
    }
    await Promise.all(pids.map((pid) => client.call('kill', { pid }).catch(() => {})));
    await Promise.allSettled(runs);
    return all;
  } finally { await c.stop(); }
}

const byNice = new Map<number, MigrationMetrics[]>(NICES.map((n) => [n, []]));
const t0 = performance.now();
console.log(`-- crowded: ${k} rma guests of ${mb} MB on one node of two, ${availableParallelism()} cores; ${rounds} rounds, each moving all of them at once; ${pairs} pair(s) of runs --`);
for (let p = 0; p < pairs; p++) for (const n of NICES) byNice.get(n)!.push(...(await crowd(n)));

const stats = (xs: number[]) => ({ med: median(xs), p90: percentile(xs, 90), max: Math.max(...xs) });
const rows = NICES.map((n) => {
  const ms = byNice.get(n)!;
  return { n, count: ms.length, down: stats(ms.map((m) => m.downtimeMs ?? NaN)), total: stats(ms.map((m) => m.totalMs ?? NaN)), setup: median(ms.map((m) => m.setupMs ?? NaN)) };
});
console.log(table(['guest nice', 'migrations', 'down med', 'down p90', 'down max', 'total med', 'total p90', 'setup med'],
  rows.map((r) => [r.n, r.count, f1(r.down.med), f1(r.down.p90), f1(r.down.max), f1(r.total.med), f1(r.total.p90), f1(r.setup)])));
const [at0, at10] = rows;
console.log(`at nice 0 over at nice 10 (ms/ms, > 1: the default is faster): down time median ${f2(at0!.down.med / at10!.down.med)}, ` +
  `p90 ${f2(at0!.down.p90 / at10!.down.p90)}, max ${f2(at0!.down.max / at10!.down.max)}; setup median ${f2(at0!.setup / at10!.setup)} ` +
  `(${((performance.now() - t0) / 1000).toFixed(0)} s)`);
