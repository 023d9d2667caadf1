// Start real ferry node daemons (separate OS processes) on 127.0.0.1, port 0,
// with a fresh key and temporary data directories; talk to them through the
// real `ferry` command; stop them all.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { loadKey, writeKey } from '../../src/transport/index.ts';
import { call, connectCluster, connectToProcess } from '../../src/node/client.ts';
import type { MigrationMetrics } from '../../src/migration/index.ts';
import { FERRY_BIN, ROOT, TEST_CACHE, ferry, tempDir, type RunResult } from './ferry.ts';

export interface ClusterNode {
  name: string;
  addr: string;
  dataDir: string;
  child: ChildProcess;
  /** What the daemon has logged so far. */
  log(): string;
  /** Resolves with the exit code when the daemon's process ends. */
  exited: Promise<number | null>;
}

export interface Cluster {
  nodes: ClusterNode[];
  keyFile: string;
  dir: string;
  /** Run `ferry ARGS` against the cluster through node `via` (index, default 0). */
  ferry(args: string[], opts?: Parameters<typeof ferry>[1] & { via?: number }): Promise<RunResult>;
  /** Start one more node (joining through node 0 unless join is given). */
  addNode(name: string, opts?: { join?: string[]; keyFile?: string; extraArgs?: string[]; env?: Record<string, string> }): Promise<ClusterNode>;
  /** SIGKILL a node's process. */
  kill9(i: number): Promise<void>;
  /** SIGTERM every daemon still running (SIGKILL after 5 s), remove the temp dir. */
  stop(): Promise<void>;
}

export interface StartNodeOptions {
  name: string;
  keyFile?: string;
  dataDir: string;
  join?: string[];
  extraArgs?: string[];
  env?: Record<string, string>;
  timeoutMs?: number;
}

/** Start one daemon and wait for its "listening on HOST:PORT" line. */
export function startNode(o: StartNodeOptions): Promise<ClusterNode> {
  // FERRY_TEST_DAEMON_NODE_ARGS: node flags for every daemon (e.g. --cpu-prof --cpu-prof-dir=DIR, to profile one;
  // --trace-gc, with FERRY_TEST_DAEMON_LOGS=1 to see its lines).
  const nodeArgs = (process.env.FERRY_TEST_DAEMON_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const args = [...nodeArgs, FERRY_BIN, 'node', 'start', '--name', o.name, '--listen', '127.0.0.1:0', '--data-dir', o.dataDir,
    ...(o.keyFile ? ['--key-file', o.keyFile] : []), ...(o.join ?? []).flatMap((j) => ['--join', j]), ...(o.extraArgs ?? [])];
  const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, FERRY_CACHE_DIR: TEST_CACHE, FERRY_KEY_FILE: '', FERRY_PARENT_PID: String(process.pid), ...o.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  child.stderr!.on('data', (d) => { err += d; if (process.env.FERRY_TEST_DAEMON_LOGS) process.stderr.write(d); });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`node ${o.name} did not start within ${o.timeoutMs ?? 30_000} ms: ${err}`)); }, o.timeoutMs ?? 30_000);
    child.stdout!.on('data', (d) => {
      out += d;
      if (process.env.FERRY_TEST_DAEMON_LOGS) process.stdout.write(d); // e.g. --trace-gc's lines
      const m = /listening on (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ name: o.name, addr: m[1], dataDir: o.dataDir, child, log: () => err, exited });
      }
    });
    void exited.then((code) => { clearTimeout(timer); reject(new Error(`node ${o.name} exited (code ${code}) before listening: ${err}`)); });
  });
}

/** Start n nodes (n0, n1, ...): the first alone, the others joining through it. */
export async function startCluster(n: number, opts: { names?: string[]; extraArgs?: string[]; env?: Record<string, Record<string, string>>; noKey?: boolean } = {}): Promise<Cluster> {
  const tmp = tempDir('ferry-cluster-');
  // noKey (benchmarks only): plain TCP, no TLS; keyFile is then ''.
  const keyFile = opts.noKey ? '' : join(tmp.path, 'cluster.key');
  if (keyFile) writeKey(keyFile);
  const names = opts.names ?? Array.from({ length: n }, (_, i) => `n${i}`);
  const nodes: ClusterNode[] = [];
  const cluster: Cluster = {
    nodes, keyFile, dir: tmp.path,
    ferry: (args, o = {}) => {
      const { via = 0, ...rest } = o;
      return ferry(args, { ...rest, env: { FERRY_CLUSTER: nodes[via].addr, FERRY_KEY_FILE: keyFile, ...rest.env } });
    },
    addNode: async (name, o = {}) => {
      const node = await startNode({ name, keyFile: o.keyFile ?? keyFile, dataDir: join(tmp.path, name), join: o.join ?? (nodes[0] ? [nodes[0].addr] : []), extraArgs: o.extraArgs ?? opts.extraArgs, env: o.env ?? opts.env?.[name] });
      nodes.push(node);
      return node;
    },
    kill9: async (i) => {
      nodes[i].child.kill('SIGKILL');
      await nodes[i].exited;
    },
    stop: async () => {
      await Promise.all(nodes.map(async (nd) => {
        if (nd.child.exitCode !== null || nd.child.signalCode !== null) return;
        nd.child.kill('SIGTERM');
        const t = setTimeout(() => nd.child.kill('SIGKILL'), 5000);
        await nd.exited;
        clearTimeout(t);
      }));
      tmp.cleanup();
    },
  };
  try {
    await cluster.addNode(names[0], { join: [] });
    await Promise.all(names.slice(1).map((name) => cluster.addNode(name)));
    nodes.sort((a, b) => names.indexOf(a.name) - names.indexOf(b.name));
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return cluster;
}

/** Add a node with the file-server role and wait until the nodes at `askVia` know its role
 *  (flushing and freeze-free pick their file server from the membership). */
export async function addFileServer(c: Cluster, name: string, extraArgs: string[] = [], askVia: number[] = [0]): Promise<void> {
  await c.addNode(name, { extraArgs: [...extraArgs, '--role', 'file-server'] });
  for (const i of askVia)
    await eventually(async () => ((await ClusterClient.for(c, i).call('nodes')).members as { name: string; roles: string[] }[]).find((m) => m.name === name)?.roles.includes('file-server'), 15_000, `the file server ${name}'s role to be known`);
}

/** Poll until fn returns a truthy value (or throw after timeoutMs). */
export async function eventually<T>(fn: () => Promise<T | undefined | false>, timeoutMs = 8000, what = 'condition'): Promise<T> {
  const t0 = Date.now();
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The cluster's control API straight from the test process (what the CLI does, without
 *  starting a node.js process per command): real connections, real daemons. */
export class ClusterClient {
  private constructor(private readonly target: { addr: string; key?: Buffer }) {}

  static for(c: Cluster, via = 0): ClusterClient {
    return new ClusterClient({ addr: c.nodes[via].addr, ...(c.keyFile ? { key: loadKey(c.keyFile) } : {}) });
  }

  async call(method: string, header: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    const conn = await connectCluster(this.target);
    try { return await call(conn, method, header as never, undefined, timeoutMs); } finally { conn.destroy(); }
  }

  async ps(): Promise<{ pid: string; node: string; state: string; program: string; migrations: number; home: string; residualDependencies: string[] }[]> {
    return (await this.call('ps')).processes as never;
  }

  /** Migrate pid to node `to` through the node that runs it; the final metrics. */
  async migrate(pid: string, to: string, extra: Record<string, unknown> = {}): Promise<MigrationMetrics> {
    const { conn } = await connectToProcess(this.target, pid);
    try { return (await call(conn, 'migrate', { pid, to, ...extra } as never, undefined, 600_000)).metrics as unknown as MigrationMetrics; } finally { conn.destroy(); }
  }

  /** The pid of the one process running `program` (waits until it runs); `skip`: pids that
   *  were there before (a cluster shared by tests may still run an earlier one of it). */
  async waitRunning(program: string, timeoutMs = 60_000, skip: ReadonlySet<string> = new Set()): Promise<string> {
    return eventually(async () => (await this.ps()).find((p) => p.program === program && p.state === 'running' && !skip.has(p.pid))?.pid, timeoutMs, `${program} to run`);
  }
}
