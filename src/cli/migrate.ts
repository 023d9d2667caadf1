// Migration commands: `ferry migrate`, `ferry migrate --cancel`, `ferry
// migrations`, and the cluster forms of checkpoint and restore (`ferry
// checkpoint PID -o FILE`, `ferry restore FILE --node NAME`).
// Each talks straight to the node concerned (located through any node).
import type { Command } from 'commander';
import { readFileSync } from 'node:fs';
import { FerryError } from '../errors.ts';
import { checkImageTarget, writeImageChunks } from '../image/index.ts';
import type { MigrationMetrics, Progress } from '../migration/index.ts';
import { ALGORITHMS, VARIANTS } from '../migration/index.ts';
import { CODECS, isCodec } from '../memory/page-codec.ts';
import { call, clusterTarget, connectToNode, connectToProcess, remoteRestore, type ClusterFlags } from '../node/client.ts';
import type { Connection } from '../transport/index.ts';

const MIGRATE_TIMEOUT_MS = 60 * 60_000;
/** Algorithms with rounds while the process runs (--postcopy-after-rounds applies to them). */
const PRECOPY_ALGORITHMS = ['pre-copy', 'queued-pre-copy'];

function clusterOptions(cmd: Command): Command {
  return cmd
    .option('--cluster <HOST:PORT>', 'any node of the cluster (default: $FERRY_CLUSTER)')
    .option('--key-file <file>', 'the cluster key (default: $FERRY_KEY_FILE)');
}

const ms = (v: number | null) => (v === null ? '-' : `${v.toFixed(1)} ms`);
const mb = (n: number) => `${(n / 1048576).toFixed(2)} MiB`;

/** One line per migration, for humans. */
export function formatMetrics(m: MigrationMetrics): string {
  const lines = [
    `migration ${m.id}: ${m.pid} ${m.from} -> ${m.to} (${m.algorithm}${m.variant ? ` ${m.variant}` : ''}): ${m.state}${m.error ? `: ${m.error.message}` : ''}`,
    `  setup ${ms(m.setupMs)}  preparation ${ms(m.preparationMs)}  down time ${ms(m.downtimeMs)}  post-processing ${ms(m.postProcessingMs)}  total ${ms(m.totalMs)}`,
    `  sent ${mb(m.bytes.total)} (setup ${mb(m.bytes.setup)}, preparation ${mb(m.bytes.preparation)}, down time ${mb(m.bytes.downtime)}, post-processing ${mb(m.bytes.postProcessing)})`,
    `  pages: ${m.pages.addressSpace} in the address space, ${m.pages.sent} sent, ${m.pages.zero} zero (not sent), at most ${m.pages.maxSendsPerPage} sends per page`,
  ];
  if (m.residualDependencies?.length) lines.push(`  residual dependency on ${m.residualDependencies.join(', ')}: the process still fetches pages from there (total time open)`);
  if (m.fileServer) lines.push(`  file server ${m.fileServer.node}: ${m.fileServer.pages} pages flushed (${mb(m.fileServer.bytes)})${m.fileServer.flushMs !== null ? `, every page there ${ms(m.fileServer.flushMs)} after the freeze` : ''}`);
  if (m.rounds > 0) lines.push(`  ${m.rounds} rounds while running${m.roundsEnded ? ` (then ${m.roundsEnded})` : ''}, ${m.pages.resent} pages resent, dirty rate ${m.dirtyRateBytesPerSec === null ? '-' : `${(m.dirtyRateBytesPerSec / 1e6).toFixed(1)} MB/s`}${m.throttle ? `, throttled to ${((1 - m.throttle) * 100).toFixed(0)}%` : ''}`);
  if (m.switchedToPostCopy) lines.push(`  not converged after ${m.rounds} rounds: switched to post-copy (${m.remoteFaults} remote faults, execution delay ${ms(m.executionDelayMs)})`);
  if (m.remoteFaults > 0 || m.postProcessingMs) lines.push(`  ${m.remoteFaults} remote faults (median round trip ${ms(m.faultRoundTripMs)}), execution delay ${ms(m.executionDelayMs)}${m.algorithm === 'assisted-post-copy' ? `; ${m.modifiedSincePass} pages modified since the pass, ${m.notModifiedAnswers} faults answered "not modified"` : ''}`);
  if (m.compression && m.compression.codec !== 'none') lines.push(`  compressed (${m.compression.codec}): ${mb(m.compression.rawBytes)} of page batches sent as ${mb(m.compression.wireBytes)}, ratio ${m.compression.ratio === null ? '-' : m.compression.ratio.toFixed(2)}`);
  if (m.linkBandwidthBps !== null) lines.push(`  link ${(m.linkBandwidthBps / 1e6).toFixed(0)} Mbit/s: wire time ${ms(m.wireTimeMs)}, total/wire ${m.totalMs && m.wireTimeMs ? (m.totalMs / m.wireTimeMs).toFixed(2) : '-'}`);
  if (m.throughputBytesPerSec !== null) lines.push(`  throughput ${(m.throughputBytesPerSec / 1e6).toFixed(0)} MB/s`);
  return lines.join('\n') + '\n';
}

function bar(p: Progress): string {
  const frac = p.addressSpace > 0 ? Math.min(1, p.pagesSent / p.addressSpace) : 0;
  const width = 30;
  const full = Math.round(frac * width);
  return `\r${p.state.padEnd(9)} ${p.phase.padEnd(14)} [${'#'.repeat(full)}${'.'.repeat(width - full)}] ${mb(p.bytes)}, ${p.pagesSent}/${p.addressSpace || '?'} pages`;
}

export function registerMigrationCommands(program: Command): void {
  clusterOptions(program.command('migrate')
    .description('move a running process to another node; prints the migration\'s metrics')
    .argument('<pid>', 'the process (NODE/N)')
    .option('--to <node>', 'the destination node')
    .option('--algorithm <name>', `how the address space moves (${ALGORITHMS.join(', ')})`, 'total-copy')
    .option('--variant <name>', `the algorithm's variant (${Object.entries(VARIANTS).map(([a, v]) => `${a}: ${v.join(' (default) or ')}`).join('; ')})`)
    .option('--file-server <node>', 'flushing, freeze-free: the file server to flush the pages to (default: any up node with the file-server role)')
    .option('--page-size <bytes>', 'transfer page size: 4096, 16384 or 65536', (v) => Number(v), 4096)
    .option('--max-rounds <n>', 'pre-copy: rounds while the process runs, at most (default 6, as in the thesis)', (v) => Number(v))
    .option('--downtime-limit <ms>', 'pre-copy: freeze once the rest would take this long to send (default 300)', (v) => Number(v))
    .option('--thesis-limits', 'pre-copy: the thesis\'s rule instead (freeze when under 30% of the address space is dirty)')
    .option('--auto-converge', 'throttle the process while it dirties memory faster than the link drains it (QEMU)')
    .option('--postcopy-after-rounds <n>', 'pre-copy, queued-pre-copy: not converged after N rounds, switch to post-copy (the state alone moves at the freeze; the destination fetches the rest)', (v) => Number(v))
    .option('--compress <codec>', `compress page batches on the wire: ${CODECS.join(', ')} (deflate: node:zlib, level 1; lz4: faster, for fast links); both nodes must have it`, 'none')
    .option('--cancel', 'cancel the migration of PID under way (the process stays where it is)')
    .option('--json', 'print the metrics as JSON (no progress bar)'))
    .action(async (pid: string, flags: ClusterFlags & { to?: string; algorithm: string; variant?: string; fileServer?: string; pageSize: number; cancel?: boolean; json?: boolean; maxRounds?: number; downtimeLimit?: number; thesisLimits?: boolean; autoConverge?: boolean; postcopyAfterRounds?: number; compress: string }) => {
      const target = clusterTarget(flags);
      if (flags.cancel) {
        const { conn } = await connectToProcess(target, pid);
        try {
          const r = await call(conn, 'migrate-cancel', { pid });
          process.stderr.write(`ferry: cancelled migration ${String(r.id)} of ${pid}\n`);
        } finally { conn.destroy(); }
        return;
      }
      if (!flags.to) throw new FerryError('bad-argument', 'where to? give --to NODE (or --cancel)');
      if (!ALGORITHMS.includes(flags.algorithm)) throw new FerryError('bad-argument', `unknown algorithm '${flags.algorithm}' (known: ${ALGORITHMS.join(', ')})`);
      if (flags.variant !== undefined && !VARIANTS[flags.algorithm]?.includes(flags.variant))
        throw new FerryError('bad-argument', VARIANTS[flags.algorithm] ? `${flags.algorithm} has no variant '${flags.variant}' (known: ${VARIANTS[flags.algorithm]!.join(', ')})` : `${flags.algorithm} has no variants`);
      if (![4096, 16384, 65536].includes(flags.pageSize)) throw new FerryError('bad-argument', '--page-size must be 4096, 16384 or 65536');
      // The node checks these too, by their wire names: said here by the flags the user typed.
      if (flags.maxRounds !== undefined && !(Number.isInteger(flags.maxRounds) && flags.maxRounds >= 0 && flags.maxRounds <= 1000))
        throw new FerryError('bad-argument', '--max-rounds must be a whole number of rounds from 0 to 1000');
      if (flags.downtimeLimit !== undefined && !(flags.downtimeLimit >= 0 && flags.downtimeLimit <= 3_600_000))
        throw new FerryError('bad-argument', '--downtime-limit must be a number of ms from 0 to 3600000');
      if (flags.postcopyAfterRounds !== undefined) {
        if (!Number.isInteger(flags.postcopyAfterRounds) || flags.postcopyAfterRounds < 1 || flags.postcopyAfterRounds > 1000)
          throw new FerryError('bad-argument', '--postcopy-after-rounds must be a whole number of rounds from 1 to 1000');
        if (!PRECOPY_ALGORITHMS.includes(flags.algorithm))
          throw new FerryError('bad-argument', `--postcopy-after-rounds applies to ${PRECOPY_ALGORITHMS.join(' and ')}, not ${flags.algorithm}`);
      }
      if (!isCodec(flags.compress)) throw new FerryError('bad-argument', `--compress must be one of ${CODECS.join(', ')}`);
      const showBar = !flags.json && process.stderr.isTTY;
      let metrics: MigrationMetrics | undefined;
      for (let attempt = 0; !metrics; attempt++) {
        const { conn } = await connectToProcess(target, pid);
        try {
          if (showBar) conn.on('MIG_PROGRESS', (m) => process.stderr.write(bar(m.header.progress as unknown as Progress)));
          const r = await call(conn, 'migrate', {
            pid, to: flags.to, algorithm: flags.algorithm, pageSize: flags.pageSize, progress: showBar,
            ...(flags.variant !== undefined ? { variant: flags.variant } : {}),
            ...(flags.fileServer !== undefined ? { fileServer: flags.fileServer } : {}),
            ...(flags.maxRounds !== undefined ? { maxRounds: flags.maxRounds } : {}),
            ...(flags.downtimeLimit !== undefined ? { downtimeLimitMs: flags.downtimeLimit } : {}),
            ...(flags.thesisLimits ? { thesisLimits: true } : {}), ...(flags.autoConverge ? { autoConverge: true } : {}),
            ...(flags.postcopyAfterRounds !== undefined ? { postcopyAfterRounds: flags.postcopyAfterRounds } : {}),
            ...(flags.compress !== 'none' ? { compress: flags.compress } : {}),
          }, undefined, MIGRATE_TIMEOUT_MS);
          metrics = r.metrics as unknown as MigrationMetrics;
        } catch (e) {
          // It moved between locating it and asking: locate it again, once.
          if (!(e instanceof FerryError && e.code === 'not-here') || attempt > 0) throw e;
        } finally {
          conn.destroy();
          if (showBar) process.stderr.write('\n');
        }
      }
      process.stdout.write(flags.json ? JSON.stringify(metrics, null, 2) + '\n' : formatMetrics(metrics));
      if (metrics.state === 'completed') return;
      process.exitCode = 1;
      // stdout holds JSON for a script: the terminal hears why too.
      if (flags.json) process.stderr.write(`ferry: migration ${metrics.id} of ${pid} ${metrics.state}${metrics.error ? `: ${metrics.error.message}` : ''}\n`);
    });

  clusterOptions(program.command('migrations')
    .description('list the cluster\'s past and current migrations with their metrics')
    .option('--json', 'print JSON'))
    .action(async (flags: ClusterFlags & { json?: boolean }) => {
      const { connectCluster } = await import('../node/client.ts');
      const conn = await connectCluster(clusterTarget(flags));
      try {
        const r = await call(conn, 'migrations');
        for (const u of (r.unreachable ?? []) as { node: string; error: string }[]) process.stderr.write(`ferry: node ${u.node} did not answer: ${u.error}\n`);
        const list = (r.migrations ?? []) as unknown as MigrationMetrics[];
        process.stdout.write(flags.json ? JSON.stringify(list, null, 2) + '\n' : list.map(formatMetrics).join(''));
      } finally { conn.destroy(); }
    });

  clusterOptions(program.command('checkpoint')
    .description('write an image of a running process (it keeps running)')
    .argument('<pid>', 'the process (NODE/N)')
    .requiredOption('-o, --output <file>', 'the image file'))
    .action(async (pid: string, flags: ClusterFlags & { output: string }) => {
      await checkImageTarget(flags.output);
      const { conn, node } = await connectToProcess(clusterTarget(flags), pid);
      try {
        const image = receiveImage(conn);
        const r = await call(conn, 'checkpoint', { pid }, undefined, MIGRATE_TIMEOUT_MS);
        const bytes = await image(Number(r.stream));
        await writeImageChunks(flags.output, [bytes]);
        process.stderr.write(`ferry: wrote ${mb(bytes.length)} image of ${pid} (on ${node}) to ${flags.output}\n`);
      } finally { conn.destroy(); }
    });
}

/** Collect the image stream a checkpoint reply names. */
function receiveImage(conn: Connection): (id: number) => Promise<Buffer> {
  const streams = new Map<number, Promise<Buffer>>();
  conn.onStream((s) => { const p = s.collect(); p.catch(() => {}); streams.set(s.id, p); });
  return async (id) => {
    const p = streams.get(id);
    if (!p) throw new FerryError('protocol', `the node named image stream ${id} but sent none`);
    return p;
  };
}

/** `ferry restore FILE --node NAME`: the image becomes a new process there, attached to this terminal. */
export async function restoreOnNode(file: string, flags: ClusterFlags & { node: string }): Promise<void> {
  let bytes: Buffer;
  try { bytes = readFileSync(file); } catch (e) { throw new FerryError('not-found', `cannot read image ${file}: ${(e as Error).message}`); }
  const conn = await connectToNode(clusterTarget(flags), flags.node);
  let pid: string | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (!pid) process.exit(sig === 'SIGINT' ? 130 : 143);
    call(conn, 'kill', { pid }).catch(() => {}).finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const r = await remoteRestore(conn, bytes, {
      stdout: (b) => process.stdout.write(b), stderr: (b) => process.stderr.write(b), stdin: process.stdin,
      started: (id) => { pid = id; },
    }, file);
    if (r.error) process.stderr.write(`ferry: ${r.error.message}\n`);
    conn.destroy();
    await new Promise<void>((res) => process.stdout.write('', () => res()));
    process.exit(r.exitCode);
  } finally {
    conn.destroy();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
