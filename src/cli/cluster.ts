// Cluster commands: `ferry node start`, `ferry nodes`, `ferry ps`, `ferry kill`,
// `ferry keygen`, and `ferry run --node NAME` (added to the run command).
// Every command but `node start` and `keygen` reaches the cluster through any
// node: --cluster HOST:PORT or FERRY_CLUSTER, key from --key-file or
// FERRY_KEY_FILE.
import { type Command, InvalidArgumentError } from 'commander';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { FerryError } from '../errors.ts';
import { loadKey, parseBandwidth, parseLatency, writeKey } from '../transport/index.ts';
import { loadProgram } from '../vm/snapshot.ts';
import { compileEagerly } from '../vm/worker-code.ts';
import { DEFAULT_GUEST_NICE, MAX_NICE } from '../vm/guest-priority.ts';
import { call, clusterTarget, connectCluster, remoteRun, type ClusterFlags } from '../node/client.ts';
import { NodeDaemon } from '../node/daemon.ts';
import { deferredLog } from '../node/log.ts';
import { parseAddress } from '../node/fields.ts';
import type { MemberInfo } from '../node/membership.ts';
import type { ProcessInfo } from '../node/process-table.ts';
import { describeDependents } from '../node/control.ts';
import type { Dependent } from '../node/page-server.ts';
import { ROLES } from '../node/file-server.ts';

const collect = (v: string, prev: string[]) => [...prev, v];

function address(v: string): string {
  try { parseAddress(v); } catch (e) { throw new InvalidArgumentError((e as Error).message); }
  return v;
}

function niceLevels(v: string): number {
  if (!/^\d+$/.test(v) || Number(v) > MAX_NICE) throw new InvalidArgumentError(`give a whole number from 0 to ${MAX_NICE}`);
  return Number(v);
}

function addClusterOptions(cmd: Command): Command {
  return cmd
    .option('--cluster <HOST:PORT>', 'any node of the cluster (default: $FERRY_CLUSTER)', address)
    .option('--key-file <file>', 'the cluster key (default: $FERRY_KEY_FILE)');
}

async function withCluster<T>(flags: ClusterFlags, fn: (conn: Awaited<ReturnType<typeof connectCluster>>) => Promise<T>): Promise<T> {
  const conn = await connectCluster(clusterTarget(flags));
  try { return await fn(conn); } finally { conn.destroy(); }
}

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ')).join('\n') + '\n';
}

function mib(n: number): string { return `${(n / 1048576).toFixed(1)} MiB`; }

/** Write to stdout and wait until it is flushed (before process.exit). */
function flush(stream: NodeJS.WriteStream): Promise<void> {
  return new Promise((r) => { if (!stream.write('', () => r())) stream.once('drain', () => r()); });
}

export function registerClusterCommands(program: Command): void {
  const node = program.command('node').description('run a ferry node (daemon)');
  node.command('start')
    .description('start a node in the foreground (until SIGTERM/SIGINT); prints "listening on HOST:PORT"')
    .requiredOption('--name <name>', 'this node\'s name (unique in the cluster)')
    .requiredOption('--listen <HOST:PORT>', 'address to listen on (port 0: any free port)', address)
    .option('--join <HOST:PORT>', 'join the cluster through this member (repeatable: the first that answers)', (v: string, prev: string[]) => [...prev, address(v)], [])
    .option('--key-file <file>', 'the cluster key (default: $FERRY_KEY_FILE; none: plain TCP, no authentication)')
    .option('--data-dir <dir>', 'where the node keeps its files (default: $TMPDIR/ferry-node-NAME)')
    .option('--link-bandwidth <rate>', 'shape outgoing traffic to this bandwidth (e.g. 100mbit)')
    .option('--link-latency <time>', 'add this one-way latency to outgoing traffic (e.g. 1ms)')
    .option('--role <role>', `also serve as (repeatable): ${ROLES.join(', ')} (keeps page stores for flushing and freeze-free)`, collect, [])
    .option('--guest-nice <n>', `run programs this many nice levels below the node (0-${MAX_NICE}; 0: at its priority), so moving them and carrying their output keep the CPU they need while they are busy`, niceLevels, DEFAULT_GUEST_NICE)
    .action(async (flags: { name: string; listen: string; join: string[]; keyFile?: string; dataDir?: string; linkBandwidth?: string; linkLatency?: string; role: string[]; guestNice: number }) => {
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(flags.name)) throw new FerryError('bad-argument', `--name ${flags.name}: use letters, digits, '.', '_' and '-' (no '/')`);
      for (const r of flags.role) if (!(ROLES as readonly string[]).includes(r)) throw new FerryError('bad-argument', `--role ${r}: known roles are ${ROLES.join(', ')}`);
      if (flags.linkBandwidth) parseBandwidth(flags.linkBandwidth);
      if (flags.linkLatency) parseLatency(flags.linkLatency);
      compileEagerly(); // before any worker starts
      const keyFile = flags.keyFile ?? process.env.FERRY_KEY_FILE;
      const key = keyFile ? loadKey(keyFile) : undefined;
      // A daemon outlives the terminal that started it: once its stderr is gone (EPIPE), it logs
      // nothing more, rather than failing on each line (an error that would itself be logged).
      let logging = true;
      process.stderr.on('error', () => { logging = false; });
      const log = deferredLog((text) => { if (logging) process.stderr.write(text); }, () => `${new Date().toISOString()} ${flags.name}:`);
      if (!key) log('no key: connections are plain TCP and anyone who can reach this port controls the node');
      process.on('unhandledRejection', (e) => log(`internal error (unhandled rejection): ${(e as Error)?.stack ?? String(e)}`));
      process.on('uncaughtException', (e) => log(`internal error: ${e.stack ?? e.message}`));
      const { host, port } = parseAddress(flags.listen);
      const d = await NodeDaemon.start({
        name: flags.name, host, port, join: flags.join, key, dataDir: flags.dataDir ? resolve(flags.dataDir) : undefined,
        shaping: flags.linkBandwidth || flags.linkLatency ? { bandwidth: flags.linkBandwidth, latency: flags.linkLatency } : undefined,
        faults: process.env.FERRY_FAULTS, log, roles: [...new Set(flags.role)], guestNice: flags.guestNice,
      });
      process.stdout.write(`listening on ${d.addr}\n`);
      log(`node ${d.name} listening on ${d.addr}, data in ${d.dataDir}${flags.role.length ? `, roles: ${flags.role.join(', ')}` : ''}`);
      await new Promise<void>((done) => {
        let stopping = false;
        let waiting: NodeJS.Timeout | undefined;
        const stop = (why: string) => {
          if (stopping) return;
          stopping = true;
          clearInterval(waiting);
          log(`${why}: stopping`);
          const hard = setTimeout(() => { log('stop took too long; exiting'); process.exit(1); }, 10_000);
          hard.unref();
          d.stop(why).then(() => { log('stopped'); done(); }, (e) => { log(`stop failed: ${(e as Error).message}`); done(); });
        };
        // Processes on other nodes that need pages held here would fail: the first signal does not
        // stop the node while they run (it stops once none is left); a second one, or
        // `ferry node stop NAME --force`, stops it anyway.
        const onSignal = (sig: string) => {
          if (stopping) return;
          const deps = d.dependents();
          if (!deps.length) { stop(sig); return; }
          if (waiting) { stop(`second ${sig}: ${describeDependents(deps)} will fail`); return; }
          log(`${sig}: not stopping: ${describeDependents(deps)} need pages held here and would fail. ` +
            `Stopping once no process depends on this node; ${sig} again (or ferry node stop ${d.name} --force) stops it now`);
          waiting = setInterval(() => { if (!d.dependents().length) stop(`${sig} (no process depends on this node any more)`); }, 250);
        };
        process.on('SIGTERM', () => onSignal('SIGTERM'));
        process.on('SIGINT', () => onSignal('SIGINT'));
        void d.stopRequested.then((why) => stop(why));
        // Test harnesses: FERRY_PARENT_PID makes the node stop once that process is gone, so no
        // daemon outlives a test process that was killed before it could stop its cluster.
        const parent = Number(process.env.FERRY_PARENT_PID);
        if (parent > 0) setInterval(() => { try { process.kill(parent, 0); } catch { stop(`process ${parent} is gone`); } }, 1000).unref();
      });
      process.exit(0);
    });

  addClusterOptions(node.command('stop')
    .description('stop a node of the cluster; refused while processes on other nodes need its pages, unless --force')
    .argument('<name>', 'the node')
    .option('--force', 'stop it anyway: the processes that need its pages will fail'))
    .action(async (name: string, flags: ClusterFlags & { force?: boolean }) => {
      const r = await withCluster(flags, (c) => call(c, 'node-stop', { name, ...(flags.force ? { force: true } : {}) }));
      const deps = (r.dependents ?? []) as unknown as Dependent[];
      process.stderr.write(`ferry: node ${String(r.node)} is stopping${deps.length ? `; these processes need its pages and will fail: ${describeDependents(deps)}` : ''}\n`);
    });

  program.command('keygen')
    .description('write a new random cluster key to FILE (mode 0600)')
    .argument('<file>', 'the key file')
    .option('--force', 'overwrite an existing file')
    .action((file: string, flags: { force?: boolean }) => {
      if (existsSync(file) && !flags.force) throw new FerryError('bad-argument', `${file} exists (use --force to overwrite)`);
      writeKey(file);
      process.stdout.write(`wrote a new key to ${file}\n`);
    });

  addClusterOptions(program.command('nodes')
    .description('list the cluster\'s nodes and whether they are up')
    .option('--json', 'print JSON'))
    .action(async (flags: ClusterFlags & { json?: boolean }) => {
      const r = await withCluster(flags, (c) => call(c, 'nodes'));
      const members = (r.members ?? []) as MemberInfo[];
      if (flags.json) { process.stdout.write(JSON.stringify(members, null, 2) + '\n'); return; }
      process.stdout.write(table([['NAME', 'ADDRESS', 'STATE', 'ROLES', 'LAST SEEN'], ...members.map((m) => [
        m.name + (m.self ? ' *' : ''), m.addr, m.state, m.roles?.length ? m.roles.join(',') : '-', m.self ? '-' : `${(m.lastSeenMsAgo / 1000).toFixed(1)} s ago`,
      ])]));
    });

  addClusterOptions(program.command('ps')
    .description('list the processes of the whole cluster')
    .option('--json', 'print JSON'))
    .action(async (flags: ClusterFlags & { json?: boolean }) => {
      const r = await withCluster(flags, (c) => call(c, 'ps'));
      const procs = (r.processes ?? []) as ProcessInfo[];
      const unreachable = (r.unreachable ?? []) as { node: string; error: string }[];
      for (const u of unreachable) process.stderr.write(`ferry: node ${u.node} did not answer: ${u.error}\n`);
      if (flags.json) { process.stdout.write(JSON.stringify(procs, null, 2) + '\n'); return; }
      process.stdout.write(table([['PID', 'NODE', 'HOME', 'STATE', 'MEMORY', 'MIGRATIONS', 'DEPENDS ON', 'STARTED', 'PROGRAM'], ...procs.map((p) => [
        p.pid, p.node, p.home, p.state, mib(p.memoryBytes), String(p.migrations), p.residualDependencies?.length ? p.residualDependencies.join(',') : '-', p.startedAt, [p.program, ...p.args].join(' '),
      ])]));
    });

  addClusterOptions(program.command('kill')
    .description('kill a process wherever it runs')
    .argument('<pid>', 'its pid (NODE/N)'))
    .action(async (pid: string, flags: ClusterFlags) => {
      const r = await withCluster(flags, (c) => call(c, 'kill', { pid }));
      process.stderr.write(`ferry: killed ${String(r.pid)} on ${String(r.node)}\n`);
    });
}

export type RunOnNodeFlags = ClusterFlags & { node: string; files: string; dir: string[]; env: string[]; argv0?: string; checkpoint?: string; vacateAfter?: number; checkpointEvery?: number; hopEvery?: number };

/** The options `ferry run` gains for the cluster. */
export function addRunOnNodeOptions(run: Command): Command {
  return addClusterOptions(run.option('--node <name>', 'run on this node of the cluster (it becomes the home node); stdio and exit code come back here')
    .option('--files <policy>', 'with --node: after a migration, reopen the same paths (reopen: shared file systems) or have the home node serve them (home)', 'reopen'));
}

/** `ferry run --node NAME ...`: run on a node of the cluster, stdio and exit code relayed here. */
export async function runOnNode(prog: string, args: string[], flags: RunOnNodeFlags): Promise<void> {
  for (const [opt, v] of [['--checkpoint', flags.checkpoint], ['--vacate-after', flags.vacateAfter], ['--checkpoint-every', flags.checkpointEvery], ['--hop-every', flags.hopEvery]] as const)
    if (v !== undefined) throw new FerryError('bad-argument', `${opt} is not supported with --node yet`);
  for (const e of flags.env) if (!e.includes('=')) throw new FerryError('bad-argument', `--env ${e}: expected KEY=VALUE`);
  if (flags.files !== 'reopen' && flags.files !== 'home') throw new FerryError('bad-argument', `--files ${flags.files}: use reopen or home`);
  // Directories are paths on the node that runs the process (shared file systems): make them absolute here.
  const dirs = flags.dir.map((d) => {
    const [host, guest] = d.includes('::') ? d.split('::', 2) : [d, d];
    if (!host || !guest) throw new FerryError('bad-argument', `--dir ${d}: expected HOST::GUEST`);
    return `${resolve(host)}::${guest}`;
  });
  const p = loadProgram(prog);
  const target = clusterTarget(flags);
  const conn = await connectCluster(target);
  let pid: string | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (!pid) { process.exit(sig === 'SIGINT' ? 130 : 143); }
    call(conn, 'kill', { pid }).catch(() => {}).finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let r;
  try {
    r = await remoteRun(conn, { node: flags.node, program: p, args, env: flags.env, dirs, argv0: flags.argv0, files: flags.files as 'reopen' | 'home' }, {
      stdout: (b) => process.stdout.write(b),
      stderr: (b) => process.stderr.write(b),
      stdin: process.stdin,
      started: (id) => { pid = id; },
    });
  } catch (e) {
    conn.destroy();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    throw e;
  }
  if (r.error) process.stderr.write(`ferry: ${r.error.message}\n`);
  conn.destroy();
  await Promise.all([flush(process.stdout), flush(process.stderr)]);
  process.exit(r.exitCode);
}
