// Section 4: Total Copy of the RMA workload between two real node daemons (separate
// OS processes on loopback, TLS-PSK with a key, as in production), per link setting:
// shaped to 100 Mb/s, to 1 Gb/s, and unshaped. Shaping is per node (a node paces
// what it sends), so each link setting gets its own two-node cluster started with
// --link-bandwidth; migrations alternate a -> b -> a ... on one running process.
//
// Per case: the address space, bytes sent, down time, total time, wire time (bytes
// after setup / link bandwidth: the physical limit of a shaped link) and the ratio
// total/wire of each migration (goal <= 1.15 on shaped links); on loopback the
// throughput (address-space bytes moved per second of migration; goal >= 1000 MB/s),
// beside its physical limit measured in the same run (bench/link-limit.ts: a burst of
// as many bytes, from a memory as large, on a fresh TLS-PSK connection and on a plain
// TCP one, between two processes here).
// Medians over the repetitions; every ratio is of one migration's own numbers.
import { ClusterClient, eventually, startCluster, type Cluster } from '../test/helpers/cluster.ts';
import type { MigrationMetrics } from '../src/migration/index.ts';
import { parseBandwidth } from '../src/transport/shaper.ts';
import { f1, f2, median, sleep, table, wasmPath } from './util.ts';
import { measureLinkLimits, type LinkLimits } from './link-limit.ts';

export const RATIO_GOAL = 1.15;
export const LOOPBACK_GOAL_MBS = 1000; // MB/s, 10^6 bytes
const MB = 1e6, MiB = 1 << 20;

export const MIGRATE_SIZES = [4, 64, 512];
/** 'none': unshaped loopback with TLS (as in production); 'tcp': unshaped, no key, plain TCP
 *  (what ferry's own machinery moves when encryption is not the limit). */
export const MIGRATE_LINKS = ['100mbit', '1gbit', 'none', 'tcp'];
const unshaped = (link: string) => link === 'none' || link === 'tcp';

/** Repetitions per case: fewer where one migration is long (512 MB at 100 Mb/s is ~43 s),
 *  more where it is short (4 MB at 1 Gb/s: 34 ms, where a millisecond of a busy 2-core
 *  machine moves one ratio by 0.03; on loopback 4 MB takes 3-10 ms and 64 MB 60-100 ms, where
 *  the other daemon, V8's helper threads and the guests share the 2 cores; the median of 11
 *  steadies it). */
function repsFor(link: string, mb: number): number {
  if (unshaped(link)) return mb <= 128 ? 11 : 5;
  const seconds = (mb * MiB) / parseBandwidth(link);
  return seconds > 20 ? 1 : seconds > 2 ? 3 : seconds < 0.1 ? 11 : 5;
}

/** Warm-up migrations before the measured ones, not counted (their totals are printed: the
 *  figures of a cluster that has just started). Measured is the steady state of one that has been
 *  up a while, as a JIT runtime's benchmarks are (JMH's warm-up iterations): V8 optimizes a
 *  function once it has run often enough, and a migration's data path (one call per page, per
 *  read, per write) reaches that only after some migrations. Here, with --trace-opt on the
 *  daemons, Turbofan compiled data-path functions (sendPages, onStreamRead, writeEach, ...)
 *  through the 17th 4 MB migration (1-5 a migration), then one now and then; the 4 MB total over plain TCP went from 5-8 ms
 *  to 3-4 ms by then. At 64 MB, Turbofan threads took 10-50 ms of the 2 cores in each of the
 *  first migrations (perf: helper threads inside the down time), a few ms after the tenth. A
 *  bigger migration makes more calls, so fewer are needed. Unshaped only: on a shaped link the
 *  link sets the pace (two, at the first size, so each node has sent and received once). */
function warmUpsFor(link: string, mb: number, sizes: number[], reps: number): number {
  if (reps <= 1) return 0;
  if (!unshaped(link)) return mb === sizes[0] ? 2 : 0;
  return mb <= 16 ? 16 : mb <= 128 ? 8 : 4;
}

export interface MigrateRow {
  link: string;
  /** Page codec (--compress). */
  compress: string;
  /** bits/s, null when unshaped. */
  linkBps: number | null;
  mb: number;
  runs: MigrationMetrics[];
}

const med = (rs: MigrationMetrics[], f: (m: MigrationMetrics) => number | null): number => median(rs.map(f).filter((x): x is number => x !== null));
export const ratioOf = (m: MigrationMetrics): number | null => (m.wireTimeMs && m.totalMs !== null ? m.totalMs / m.wireTimeMs : null);
export const mbsOf = (m: MigrationMetrics): number | null => (m.throughputBytesPerSec === null ? null : m.throughputBytesPerSec / MB);

/** Start rma on node a and wait until its whole region is written (then a little more, so nearly no page is zero). */
export async function startRma(c: Cluster, client: ClusterClient, mb: number): Promise<{ pid: string; run: Promise<unknown> }> {
  const wasm = wasmPath('rma');
  const run = c.ferry(['run', '--node', 'a', wasm, String(mb), '1000000'], { via: 1, timeoutMs: 3_600_000 });
  run.catch(() => {});
  const pid = await client.waitRunning(wasm, 120_000);
  await eventually(async () => {
    const p = (await client.call('ps')).processes as { pid: string; memoryBytes: number }[];
    return (p.find((x) => x.pid === pid)?.memoryBytes ?? 0) >= mb * MiB;
  }, 120_000, `rma ${mb} MB to touch its memory`);
  await sleep(500 + mb * 2); // random writes reach every page (~n ln n writes)
  return { pid, run };
}

/** The process's `at`-th migration between nodes a and b (it starts on a): to b, back to a, ...;
 *  one that does not complete throws, named by `what`. */
export async function hop(client: ClusterClient, pid: string, at: number, opts: Parameters<ClusterClient['migrate']>[2], what: string): Promise<MigrationMetrics> {
  const m = await client.migrate(pid, at % 2 === 0 ? 'b' : 'a', opts);
  if (m.state !== 'completed') throw new Error(`${what} ${m.state}: ${m.error?.message}`);
  return m;
}

export async function runMigrate(opts: { sizes?: number[]; links?: string[]; algorithm?: string; compress?: string[] } = {}): Promise<MigrateRow[]> {
  const sizes = opts.sizes ?? MIGRATE_SIZES, links = opts.links ?? MIGRATE_LINKS;
  const algorithm = opts.algorithm ?? 'total-copy', codecs = opts.compress ?? ['none'];
  console.log(`\n-- migrate: ${algorithm} of rma (random writes everywhere) between two nodes on loopback, TLS-PSK; ` +
    `sizes ${sizes.join(', ')} MB; links ${links.join(', ')}; compression ${codecs.join(', ')} --`);
  const rows: MigrateRow[] = [];
  for (const link of links) {
    const shaped = !unshaped(link);
    const t0 = performance.now();
    const c = await startCluster(2, { names: ['a', 'b'], extraArgs: shaped ? ['--link-bandwidth', link] : [], noKey: link === 'tcp' || !!process.env.FERRY_BENCH_NOKEY });
    const client = ClusterClient.for(c);
    try {
      for (const mb of sizes) {
        const { pid, run } = await startRma(c, client, mb);
        const reps = repsFor(link, mb);
        let at = 0;
        const warmUps = warmUpsFor(link, mb, sizes, reps);
        if (warmUps) {
          const ms: number[] = [];
          for (let i = 0; i < warmUps; i++) {
            ms.push((await hop(client, pid, at++, { algorithm }, `warm-up migration of rma ${mb} MB over ${link}`)).totalMs ?? NaN);
          }
          console.log(`   ${link} ${mb} MB: ${warmUps} warm-up migrations (not counted), total ${ms.map((x) => x.toFixed(0)).join(', ')} ms`);
        }
        for (const compress of codecs) {
          const row: MigrateRow = { link, compress, linkBps: shaped ? parseBandwidth(link) * 8 : null, mb, runs: [] };
          for (let i = 0; i < reps; i++) {
            const m = await hop(client, pid, at++, { algorithm, ...(compress !== 'none' ? { compress } : {}) }, `migration of rma ${mb} MB over ${link}`);
            row.runs.push(m);
            if (process.env.FERRY_BENCH_STEPS) console.log(`     ${m.id}: steps ${JSON.stringify(m.downtimeSteps)} setup ${m.setupMs?.toFixed(1)} ms`);
          }
          rows.push(row);
          printRow(row);
        }
        await client.call('kill', { pid }).catch(() => {});
        await run;
      }
    } finally { await c.stop(); }
    console.log(`   (${link}: ${((performance.now() - t0) / 1000).toFixed(0)} s with cluster start and workload warm-up)`);
  }
  console.log('\n' + migrateTable(rows));
  if (links.some(unshaped)) {
    const l = await measureLinkLimits(sizes);
    limit = l;
    for (const b of l.bursts) console.log(`   loopback's limit: a burst of ${b.mb} MiB between two processes here moves at ${b.tlsMBs.toFixed(0)} MB/s over TLS-PSK (${l.cipher}), ${b.tcpMBs.toFixed(0)} MB/s over plain TCP`);
  }
  return rows;
}

/** The loopback limit measured by the last runMigrate with an unshaped link. */
let limit: LinkLimits | null = null;

function printRow(r: MigrateRow): void {
  const ms = r.runs.map((m) => m.totalMs ?? NaN);
  console.log(`   ${r.link} ${r.mb} MB${r.compress !== 'none' ? ` ${r.compress}` : ''}: ${r.runs.length} migration(s), total ${ms.map((x) => x.toFixed(0)).join(', ')} ms`);
}

export function migrateTable(rows: MigrateRow[]): string {
  return table(
    ['link', 'rma', 'compress', 'reps', 'addr space', 'bytes sent', 'z ratio', 'down ms', 'total ms', 'wire ms', 'total/wire', 'over ms', 'MB/s'],
    rows.map((r) => {
      const wire = med(r.runs, (m) => m.wireTimeMs);
      return [
        r.link, `${r.mb} MB`, r.compress, r.runs.length,
        `${f1(med(r.runs, (m) => m.pages.addressSpace * m.pages.pageSize) / MiB)} MiB`,
        `${f1(med(r.runs, (m) => m.bytes.total - m.bytes.setup) / MiB)} MiB`,
        f2(med(r.runs, (m) => m.compression?.ratio ?? null)),
        f1(med(r.runs, (m) => m.downtimeMs)), f1(med(r.runs, (m) => m.totalMs)),
        r.linkBps === null ? '-' : f1(wire),
        r.linkBps === null ? '-' : f2(med(r.runs, ratioOf)),
        r.linkBps === null ? '-' : f1(med(r.runs, (m) => (m.totalMs !== null && m.wireTimeMs !== null ? m.totalMs - m.wireTimeMs : null))),
        f1(med(r.runs, mbsOf)),
      ];
    }),
  );
}

/** One verdict line per goal and link: total/wire on shaped links, throughput on loopback. */
export function migrateVerdicts(rows: MigrateRow[]): string[] {
  const verdict = (ok: boolean) => (ok ? 'MET' : 'NOT MET');
  const out: string[] = [];
  for (const link of [...new Set(rows.map((r) => r.link))]) {
    const rs = rows.filter((r) => r.link === link);
    if (rs[0]!.linkBps !== null) {
      const ratios = rs.map((r) => ({ mb: r.mb, x: med(r.runs, ratioOf) }));
      out.push(`migrate total/wire <= ${RATIO_GOAL} at ${link}: ${verdict(ratios.every((r) => r.x <= RATIO_GOAL))} (` +
        ratios.map((r) => `${r.mb} MB ${r.x.toFixed(3)}`).join(', ') + ')');
    } else {
      const tp = rs.map((r) => ({ mb: r.mb, x: med(r.runs, mbsOf) }));
      const tls = link === 'none';
      const burst = (mb: number) => { const b = limit?.bursts.find((x) => x.mb === mb); return b ? (tls ? b.tlsMBs : b.tcpMBs) : null; };
      out.push(`migrate throughput >= ${LOOPBACK_GOAL_MBS} MB/s on loopback (${tls ? `TLS-PSK, ${limit?.cipher ?? ''}` : 'no key, plain TCP'}): ${verdict(tp.every((r) => r.x >= LOOPBACK_GOAL_MBS))} (` +
        tp.map((r) => {
          const b = burst(r.mb);
          // A migration cannot beat the burst it rides on: say so where the burst itself falls short.
          return `${r.mb} MB ${r.x.toFixed(0)} MB/s${b ? ` = ${f2(r.x / b)}x a bare burst of as many bytes, ${b.toFixed(0)} MB/s${b < LOOPBACK_GOAL_MBS ? ' (itself below the goal)' : ''}` : ''}`;
        }).join('; ') + ')');
    }
  }
  return out;
}
