// Section 2: stop latency. A process runs; repeatedly, after a random 5-50 ms, it is
// frozen (stopMs: from the request until its stack was unwound, measured on one
// clock across threads) and continued.
import { f3, median, percentile, sleep, startFerry, table } from './util.ts';

/** Long-running arguments: each process outlives its freezes (it is killed after). */
export const STOP_WORKLOADS: { name: string; args: string[] }[] = [
  { name: 'rma', args: ['4', '100000'] },
  { name: 'recurse', args: ['5000', '10000000'] },
  { name: 'getpid', args: ['1000000000'] },
  { name: 'sleeper', args: ['1000000', '50'] },
  { name: 'reference', args: ['10000000'] },
];

export interface StopRow { name: string; stopMs: number[]; restarts: number }

export const STOP_GOAL_MS = 1;

export async function runStop(freezesPerWorkload: number, only?: string[]): Promise<StopRow[]> {
  console.log(`\n-- stop latency (${freezesPerWorkload} freezes per workload, random 5-50 ms apart) --`);
  // a fixed seed, so the waits are the same from run to run
  let seed = 0x5eed;
  const rnd = () => { seed = (seed * 1103515245 + 12345) >>> 0; return (seed >>> 8) / (1 << 24); };
  const rows: StopRow[] = [];
  for (const wl of STOP_WORKLOADS) {
    if (only && only.length && !only.includes(wl.name)) continue;
    const row: StopRow = { name: wl.name, stopMs: [], restarts: 0 };
    let run = await startFerry(wl.name, { args: wl.args });
    await run.running;
    try {
      while (row.stopMs.length < freezesPerWorkload) {
        await sleep(5 + 45 * rnd());
        if (run.proc.state !== 'running') { // ended early: start another
          row.restarts++;
          run = await startFerry(wl.name, { args: wl.args });
          await run.running;
          continue;
        }
        try {
          const cap = await run.proc.freeze();
          row.stopMs.push(cap.stopMs);
          run.proc.continue();
        } catch (e) {
          if ((run.proc.state as string) === 'exited') continue; // ended before its safe point
          throw e;
        }
      }
    } finally {
      await run.proc.kill();
    }
    rows.push(row);
  }
  printStop(rows);
  return rows;
}

export function printStop(rows: StopRow[]): void {
  const all = rows.flatMap((r) => r.stopMs);
  const line = (name: string, xs: number[]) => [name, xs.length, f3(median(xs)), f3(percentile(xs, 99)), f3(Math.max(...xs)), median(xs) < STOP_GOAL_MS ? 'yes' : 'NO'];
  console.log(table(['workload', 'freezes', 'median ms', 'p99 ms', 'max ms', `median < ${STOP_GOAL_MS} ms?`],
    [...rows.map((r) => line(r.name, r.stopMs)), line('overall', all)]));
}
