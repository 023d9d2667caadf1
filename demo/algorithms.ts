// Part 3 of the demo: every address-space transfer algorithm on one running
// program, side by side, measured as the thesis measured them (chapter 5: RMA,
// 4 MB of random writes, over 1 Gb/s), beside the thesis's own figures.
// Three daemons on a shaped 1 Gb/s link: a and b trade the process, f is the
// file server of flushing and freeze-free.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { MigrationMetrics } from '../src/migration/index.ts';
import type { ProcessInfo } from '../src/node/process-table.ts';
import { bold, DemoError, dim, elapsed, ferry, indent, must, printTable, quote, ROOT, say, show, sleep, startNode, stopDaemons, until, WORK } from './kit.ts';

/** Each algorithm once, in the order of the thesis's chapter 2, then those that leave a residual dependency. */
const RUNS: { algorithm: string; variant?: string }[] = [
  { algorithm: 'total-copy' }, { algorithm: 'pre-copy' }, { algorithm: 'queued-pre-copy' },
  { algorithm: 'post-copy' }, { algorithm: 'assisted-post-copy' },
  { algorithm: 'demand-paging', variant: 'copy-on-reference' }, { algorithm: 'demand-paging', variant: 'eager-dirty' },
  { algorithm: 'flushing' }, { algorithm: 'freeze-free' },
];

/** The thesis's RMA at 1 Gb/s (shared/DESIGN.md): preparation, down time, post-processing, total, ms. */
const THESIS: Record<string, [number, number, number, number]> = {
  'total-copy': [0, 82.9, 0, 82.9], 'pre-copy': [365.5, 58, 0, 423.5], 'queued-pre-copy': [36.1, 56.3, 0, 92.4],
  'post-copy': [0, 1, 390.1, 391.1], 'assisted-post-copy': [79.1, 6.3, 435.8, 521.2],
};

const label = (r: { algorithm: string; variant?: string }) => (r.variant ? `${r.algorithm} (${r.variant})` : r.algorithm);

export async function algorithms(keyFile: string): Promise<{ same: boolean; row: string[] }> {
  const rma = join(ROOT, 'workloads', 'bin', 'rma.wasm');
  const millions = process.env.FERRY_DEMO_ALGO_RMA_MILLIONS ?? '12000'; // outlasts 9 migrations (a ferry CLI each) on a fast machine
  const args = [rma, '4', millions];
  const dir = join(WORK, 'algorithms');
  mkdirSync(dir);
  const link = ['--link-bandwidth', '1gbit'];

  say('\n' + bold('Part 3, every algorithm: RMA (4 MB of random writes, the thesis\'s process) moves a <-> b once with each,'));
  say(bold('over links shaped to 1 Gb/s (what the thesis measured on); node f is the file server of flushing and freeze-free.') + '\n');
  say('9. Prepare the program\'s variants once (cached on disk by content hash; the nodes here share the cache):');
  say('   plain to run, tracked for the pre-copies\' dirty pages, faulting for the algorithms that fault pages in.');
  show(['prepare', rma], '  ');
  say(indent((await must(['prepare', rma], { timeoutMs: 300_000 })).stdout.toString()));
  say('   Three nodes, each sending at most 1 Gb/s; f with the file-server role.');
  const a = await startNode('a', keyFile, join(dir, 'a'), undefined, link);
  await Promise.all([startNode('b', keyFile, join(dir, 'b'), a.addr, link), startNode('f', keyFile, join(dir, 'f'), a.addr, [...link, '--role', 'file-server'])]);
  const env = { FERRY_CLUSTER: a.addr, FERRY_KEY_FILE: keyFile };
  await until('a, b and f up, and f known as a file server on a and b', 20_000, async () => {
    const r = await must(['nodes', '--json'], { env, timeoutMs: 30_000 });
    const members = JSON.parse(r.stdout.toString()) as { name: string; state: string; roles?: string[] }[];
    return members.filter((m) => m.state === 'up').length === 3 && members.find((m) => m.name === 'f')?.roles?.includes('file-server') ? true : undefined;
  });

  say(`\n10. Run RMA (4 MB, ${millions} M writes) on a; move it every 300 ms, each time with the next algorithm.`);
  const runCmd = ['run', '--node', 'a', ...args];
  show(runCmd, '  ');
  let lines = 0;
  const runResult = ferry(runCmd, { env, timeoutMs: 300_000, onLine: () => { lines++; } });
  let runEnded = false;
  runResult.then(() => { runEnded = true; }, () => { runEnded = true; });
  const pid = await until('the process to run on a', 60_000, async () => {
    if (runEnded) throw new DemoError(`\`ferry ${runCmd.map(quote).join(' ')}\` ended before it could be moved`, (await runResult).stderr);
    const r = await must(['ps', '--json'], { env, timeoutMs: 30_000 });
    return (JSON.parse(r.stdout.toString()) as ProcessInfo[]).find((x) => x.state === 'running' && x.args.join(' ') === args.slice(1).join(' '))?.pid;
  });
  const ids: string[] = [];
  let at = 'a';
  for (const run of RUNS) {
    await sleep(300); // it runs (and dirties its pages) on its new node first
    if (runEnded) throw new DemoError(`${pid} finished before every algorithm had moved it (set FERRY_DEMO_ALGO_RMA_MILLIONS higher)`);
    const to = at === 'a' ? 'b' : 'a';
    const cmd = ['migrate', pid, '--to', to, '--algorithm', run.algorithm, ...(run.variant ? ['--variant', run.variant] : []), '--json'];
    const r = await must(cmd, { env, timeoutMs: 120_000 });
    const m = JSON.parse(r.stdout.toString()) as MigrationMetrics;
    if (m.state !== 'completed') throw new DemoError(`${label(run)}: migration ${m.id} of ${pid} ${m.from} -> ${m.to} ended ${m.state}`, m.error?.message ?? r.stderr);
    say(`  ${dim(`[${elapsed()}]`)} ${at} -> ${to} ${label(run)}: down time ${m.downtimeMs?.toFixed(1)} ms` +
      (m.residualDependencies.length ? `, still depends on ${m.residualDependencies.join(', ')}` : ''));
    ids.push(m.id);
    at = to;
  }
  const run = await runResult;
  if (run.timedOut || run.code !== 0) throw new DemoError(`\`ferry ${runCmd.map(quote).join(' ')}\` ${run.timedOut ? 'did not finish within 300 s' : `exited with code ${run.code}`}`, run.stderr);
  say(`  ${dim(`[${elapsed()}]`)} ${pid} exited with code ${run.code} after ${ids.length} migrations (${lines} lines of output).`);

  // A residual dependency ends when the process moves on or ends: then its record has a total time.
  const records = await until('every residual dependency to end (the records\' total times)', 30_000, async () => {
    const all = JSON.parse((await must(['migrations', '--json'], { env, timeoutMs: 30_000 })).stdout.toString()) as MigrationMetrics[];
    const mine = ids.map((id) => all.find((m) => m.id === id));
    return mine.every((m) => m && m.totalMs !== null) ? (mine as MigrationMetrics[]) : undefined;
  });
  say('\n11. The thesis\'s metrics of each migration (`ferry migrations --json`), beside the thesis\'s RMA at 1 Gb/s:');
  say(dim('  prep = preparation (it still runs on the source), down = it runs nowhere, post = post-processing (it runs on'));
  say(dim('  the destination, pages still moving or served); faults and delay: remote page faults and the run time they cost.\n'));
  const f = (v: number | null | undefined) => (v === null || v === undefined ? '-' : v.toFixed(1));
  printTable(['algorithm', 'prep ms', 'down ms', 'post ms', 'total ms', 'MB sent', 'faults', 'delay ms', 'thesis prep/down/post/total'],
    records.map((m, i) => {
      const t = THESIS[RUNS[i]!.algorithm];
      return [label(RUNS[i]!), f(m.preparationMs), f(m.downtimeMs), f(m.postProcessingMs), f(m.totalMs), (m.bytes.total / 1e6).toFixed(2),
        String(m.remoteFaults), f(m.executionDelayMs), t ? t.map((x) => x.toFixed(1)).join(' / ') : '-'];
    }),
    [false, true, true, true, true, true, true, true, true]);
  say(dim('  (the thesis: two SMP Linux hosts in 2003 over a real 1 Gb/s link; here one 2-core machine, TLS, links shaped to 1 Gb/s)'));
  await stopDaemons();

  say('\n12. The reference: the same program, never migrated.');
  const refCmd = ['run', ...args];
  show(refCmd, '  ');
  const ref = await must(refCmd, { timeoutMs: 300_000 });
  const same = ref.stdout.equals(run.stdout) && ref.code === run.code;
  say(`  ${pid} after ${ids.length} migrations, one per algorithm, compared byte for byte with the unmigrated run (${run.stdout.length} bytes, exit ${run.code}): ${bold(same ? 'IDENTICAL' : 'DIFFERENT')}`);
  if (!same) {
    say('  migrated:\n' + run.stdout.toString());
    say('  unmigrated:\n' + ref.stdout.toString());
  }
  return { same, row: ['every algorithm, a<->b', `${ids.length} migrations`, `${run.code}`, same ? 'identical' : 'DIFFERENT', `${(run.ms / 1000).toFixed(1)} s`] };
}
