// `npm run demo`: a real program, frozen mid-run, written to an image, restored in
// a new OS process, and hopped through fresh workers; then a local three-node
// cluster (three `ferry node start` daemons) moves the same kind of program
// a -> b -> c -> a while it runs; then every algorithm moves one program once
// each, with the thesis's comparison table (algorithms.ts). Every output is
// compared with an uninterrupted run. Every step is a real `ferry` command in
// its own OS process (kit.ts).
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { MigrationMetrics } from '../src/migration/index.ts';
import type { ProcessInfo } from '../src/node/process-table.ts';
import { algorithms } from './algorithms.ts';
import {
  bold, cleanup, daemons, DemoError, dim, elapsed, ferry, indent, isInterrupted, must, printTable, quote, ROOT, say, show, startNode, stopDaemons, T0, until, WORK,
} from './kit.ts';

// ---------------------------------------------------------------------------
// Part 1: one machine (checkpoint, restore, hops)

async function local(rows: string[][]): Promise<boolean> {
  const rma = join(ROOT, 'workloads', 'bin', 'rma.wasm');
  const args = [rma, '16', '120'];
  const image = join(WORK, 'rma.img');

  say(bold('Part 1, one machine: RMA (random writes over 16 MB), frozen and moved while it runs.') + '\n');
  say('0. The reference: an uninterrupted run.');
  const base = ['run', ...args];
  show(base);
  const plain = await must(base);
  process.stdout.write(plain.stdout);
  rows.push(['uninterrupted run', '-', `${plain.code}`, 'reference', `${(plain.ms / 1000).toFixed(1)} s`]);

  say('\n1. Checkpoint mid-run (Condor style): after 400 ms write an image and exit 85.');
  const ck = ['run', '--checkpoint', image, '--vacate-after', '400', ...args];
  show(ck);
  const first = await ferry(ck);
  if (first.code !== 85) throw new DemoError(`\`ferry ${ck.join(' ')}\` exited with code ${first.code}, expected 85 (vacated)`, first.stderr);
  process.stdout.write(first.stdout);
  say(dim(`(exit code ${first.code}; image ${(statSync(image).size / 1048576).toFixed(1)} MiB)`));
  show(['inspect', image]);
  const insp = await must(['inspect', image]);
  process.stdout.write(insp.stdout.toString().split('\n').slice(0, 12).join('\n') + '\n');
  say('\n2. Restore it in a new OS process:');
  show(['restore', image]);
  const second = await ferry(['restore', image]);
  process.stdout.write(second.stdout);
  if (second.code !== 0) process.stderr.write(second.stderr);
  const joined = Buffer.concat([first.stdout, second.stdout]);
  const ckSame = joined.equals(plain.stdout) && second.code === plain.code;
  rows.push(['checkpoint + restore', '1 checkpoint', `${first.code} then ${second.code}`, ckSame ? 'identical' : 'DIFFERENT', `${((first.ms + second.ms) / 1000).toFixed(1)} s`]);

  say('\n3. Hop every 150 ms: freeze, encode the image, decode it, resume in a fresh worker and instance.');
  const hop = ['run', '--verbose', '--hop-every', '150', ...args];
  show(hop);
  const hopped = await ferry(hop);
  if (hopped.code !== 0) process.stderr.write(hopped.stderr);
  const hops = (hopped.stderr.match(/hop \d+/g) ?? []).length;
  const stops = [...hopped.stderr.matchAll(/stop ([\d.]+) ms/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
  const hopSame = hopped.stdout.equals(plain.stdout) && hopped.code === plain.code;
  say(dim(`${hops} hops, median stop latency ${stops.length ? stops[stops.length >> 1].toFixed(2) : '-'} ms; output ${hopSame ? 'identical' : 'DIFFERENT'}`));
  rows.push(['hops through images', `${hops} hops`, `${hopped.code}`, hopSame ? 'identical' : 'DIFFERENT', `${(hopped.ms / 1000).toFixed(1)} s`]);
  return ckSame && hopSame;
}

// ---------------------------------------------------------------------------
// Part 2: a cluster of three nodes on this machine

interface ClusterOutcome { same: boolean; row: string[]; keyFile: string }

async function cluster(): Promise<ClusterOutcome> {
  const rma = join(ROOT, 'workloads', 'bin', 'rma.wasm');
  const millions = process.env.FERRY_DEMO_RMA_MILLIONS ?? '1200'; // ~10 output lines, each longer than a migration
  const args = [rma, '16', millions];
  const dir = join(WORK, 'cluster');
  mkdirSync(dir);
  const keyFile = join(dir, 'cluster.key');

  say('\n' + bold('Part 2, a cluster: three node daemons on this machine (separate OS processes, 127.0.0.1 only);'));
  say(bold('the same kind of program moves a -> b -> c -> a while it runs.') + '\n');
  say('4. A fresh cluster key (TLS pre-shared key), then three nodes: a alone, b and c joining through a.');
  show(['keygen', keyFile], '  ');
  await must(['keygen', keyFile]);
  const a = await startNode('a', keyFile, join(dir, 'a'));
  say(dim(`  a: listening on ${a.addr}`));
  const [b, c] = await Promise.all([startNode('b', keyFile, join(dir, 'b'), a.addr), startNode('c', keyFile, join(dir, 'c'), a.addr)]);
  say(dim(`  b: listening on ${b.addr}\n  c: listening on ${c.addr}`));
  const env = { FERRY_CLUSTER: a.addr, FERRY_KEY_FILE: keyFile };
  say(`  The CLI reaches the cluster through any node: FERRY_CLUSTER=${a.addr} FERRY_KEY_FILE=${keyFile}`);
  show(['nodes'], '  ');
  const nodes = await until('all three nodes to be up', 15_000, async () => {
    const r = await must(['nodes'], { env, timeoutMs: 30_000 });
    return (r.stdout.toString().match(/\bup\b/g) ?? []).length === 3 ? r : undefined;
  });
  say(indent(nodes.stdout.toString()));

  say(`\n5. Run RMA (16 MB, ${millions} M writes) on node a with \`ferry run --node a\`: it runs inside node a's`);
  say('   daemon; its output comes back to this terminal through its home node (a), wherever it runs.');
  say('   Each time it has printed a line on its new node, move it on with `ferry migrate PID --to NODE --json`.');
  const runCmd = ['run', '--node', 'a', ...args];
  show(runCmd, '  ');
  const progress: number[] = []; // arrival time (ms since T0) of each "writes ..." line
  let lastEvent = 0;
  let done = false;
  const runResult = ferry(runCmd, {
    env, timeoutMs: 180_000,
    onLine: (l) => {
      if (/^writes /.test(l)) progress.push(performance.now());
      if (/^done /.test(l)) done = true;
      say(`  ${dim(`[${elapsed()}]`)} | ${l}`);
    },
  });
  let runEnded = false;
  runResult.then(() => { runEnded = true; }, () => { runEnded = true; });
  const ended = async (): Promise<never> => {
    const r = await runResult;
    throw new DemoError(`\`ferry ${runCmd.map(quote).join(' ')}\` ended (exit code ${r.code}) before the migrations were done${done ? ': the program finished too soon on this machine (set FERRY_DEMO_RMA_MILLIONS higher)' : ''}`, r.stderr);
  };

  const pid = await until('the process to run on a (ferry ps --json)', 60_000, async () => {
    if (runEnded) await ended();
    const r = await must(['ps', '--json'], { env, timeoutMs: 30_000 });
    const p = (JSON.parse(r.stdout.toString()) as ProcessInfo[]).find((x) => x.state === 'running' && x.args.join(' ') === args.slice(1).join(' '));
    return p?.pid;
  });
  say(`  ${dim(`[${elapsed()}]`)} ${bold(`-- ferry ps: pid ${pid}, running on a`)}`);
  lastEvent = performance.now();

  const metrics: MigrationMetrics[] = [];
  let at = 'a';
  for (const to of ['b', 'c', 'a']) {
    // Mid-run: wait for a line printed after the last event (by the node it now runs on).
    await until(`a line of output from ${pid} on ${at}`, 60_000, async () => {
      if (runEnded) await ended();
      return progress.some((t) => t > lastEvent) ? true : undefined;
    }, 50);
    const cmd = ['migrate', pid, '--to', to, '--json'];
    say(`  ${dim(`[${elapsed()}]`)} ${bold(`-- migrate ${pid} ${at} -> ${to}:`)} ${dim(`$ ferry ${cmd.join(' ')}`)}`);
    const r = await must(cmd, { env, timeoutMs: 90_000 });
    const m = JSON.parse(r.stdout.toString()) as MigrationMetrics;
    if (m.state !== 'completed') throw new DemoError(`migration ${m.id} of ${pid} ${m.from} -> ${m.to} ended ${m.state}`, m.error?.message ?? r.stderr);
    metrics.push(m);
    lastEvent = performance.now();
    say(`  ${dim(`[${elapsed()}]`)} ${bold(`-- ${pid} now runs on ${to}:`)} down time ${m.downtimeMs?.toFixed(0)} ms, ${(m.bytes.total / 1e6).toFixed(1)} MB sent (setup ${m.setupMs?.toFixed(0)} ms before, while it still ran on ${at})`);
    if (metrics.length === 1) {
      const ps = await must(['ps'], { env, timeoutMs: 30_000 });
      show(['ps'], '  '); // printed with its answer, so no output line of the program lands in between
      say(indent(ps.stdout.toString()));
    }
    at = to;
  }
  const run = await runResult;
  if (run.timedOut || run.code !== 0) throw new DemoError(`\`ferry ${runCmd.map(quote).join(' ')}\` ${run.timedOut ? 'did not finish within 180 s' : `exited with code ${run.code}`}`, run.stderr);
  say(`  ${dim(`[${elapsed()}]`)} ${bold(`-- ${pid} exited with code ${run.code}; its output came back uninterrupted across ${metrics.length} migrations.`)}`);

  say('\n6. The migrations, as the cluster recorded them:');
  show(['migrations', '--json'], '  ');
  const recorded = (JSON.parse((await must(['migrations', '--json'], { env, timeoutMs: 30_000 })).stdout.toString()) as MigrationMetrics[])
    .filter((m) => m.pid === pid && m.state === 'completed');
  if (recorded.length !== metrics.length) throw new DemoError(`ferry migrations lists ${recorded.length} completed migrations of ${pid}, expected ${metrics.length}`);
  say('  Time periods as in the thesis (Fig. 2.1): down time = the process runs nowhere; total = preparation');
  say('  + down time + post-processing (Total Copy: all of it is down time). Setup (connecting, fetching and');
  say('  compiling the module on the destination) happens before, while the process still runs: never down time.\n');
  const f = (v: number | null) => (v === null ? '-' : v.toFixed(1));
  printTable(['#', 'from', 'to', 'algorithm', 'setup ms', 'down time ms', 'total ms', 'MB sent', 'pages sent/zero'],
    recorded.map((m, i) => [String(i + 1), m.from, m.to, m.algorithm, f(m.setupMs), f(m.downtimeMs), f(m.totalMs), (m.bytes.total / 1e6).toFixed(2), `${m.pages.sent}/${m.pages.zero}`]),
    [true, false, false, false, true, true, true, true, true]);
  say(dim('  (thesis, 2003: Total Copy of a 4 MB RMA over 1 Gb/s, 82.9 ms down time; here 16 MB over loopback TLS)'));

  say('\n7. Stop the three nodes (SIGTERM): they leave the cluster and exit.');
  await stopDaemons();
  say(dim('  all three nodes stopped'));

  say('\n8. The reference: the same program, never migrated.');
  const refCmd = ['run', ...args];
  show(refCmd, '  ');
  const ref = await must(refCmd, { timeoutMs: 180_000 });
  say(indent(ref.stdout.toString().trimEnd().split('\n').slice(-2).join('\n')));
  const same = ref.stdout.equals(run.stdout) && ref.code === run.code;
  say(`  ${pid} after a -> b -> c -> a compared byte for byte with the unmigrated run (${run.stdout.length} bytes, exit ${run.code}): ${bold(same ? 'IDENTICAL' : 'DIFFERENT')}`);
  if (!same) {
    say('  migrated:\n' + indent(run.stdout.toString()));
    say('  unmigrated:\n' + indent(ref.stdout.toString()));
  }
  const wall = metrics.length ? `${(run.ms / 1000).toFixed(1)} s` : '-';
  return { same, row: ['3 nodes, a->b->c->a', `${metrics.length} migrations`, `${run.code}`, same ? 'identical' : 'DIFFERENT', wall], keyFile };
}


async function main(): Promise<void> {
  const rows: string[][] = [];
  const localSame = await local(rows);
  const { same: clusterSame, row, keyFile } = await cluster();
  rows.push(row);
  const every = await algorithms(keyFile);
  rows.push(every.row);

  say('\nSummary (each output compared byte for byte with the uninterrupted run of the same program):\n');
  printTable(['mode', 'moves', 'exit', 'output', 'wall time'], rows);
  say();
  if (!localSame || !clusterSame || !every.same) { process.exitCode = 1; say('MISMATCH: see above'); }
  else say(`All outputs identical. Done in ${((performance.now() - T0) / 1000).toFixed(0)} s.`);
}

main().catch((e: unknown) => {
  if (isInterrupted()) return;
  process.exitCode = 1;
  process.stderr.write(`\ndemo failed: ${(e as Error).message}\n`);
  if (e instanceof DemoError && e.detail) process.stderr.write(`its stderr:\n${indent(e.detail)}\n`);
  for (const d of daemons) {
    const log = d.log().trimEnd().split('\n').slice(-15).join('\n');
    if (log) process.stderr.write(`node ${d.name}'s log (last lines):\n${indent(log)}\n`);
  }
}).finally(() => { if (!isInterrupted()) return cleanup(); });
