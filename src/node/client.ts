// The CLI's side of the control API: reach the cluster through any node
// (--cluster HOST:PORT or FERRY_CLUSTER, key from --key-file or
// FERRY_KEY_FILE), make requests, and run a process remotely with its stdio
// attached to this terminal.
import { randomUUID } from 'node:crypto';
import { FerryError } from '../errors.ts';
import { connect, loadKey, type Connection, type Header } from '../transport/index.ts';
import type { Program } from '../vm/snapshot.ts';
import { RUN_TIMEOUT_MS } from './control.ts';
import { parseAddress } from './fields.ts';
import { notUp } from './membership.ts';

export interface ClusterFlags { cluster?: string; keyFile?: string }
export interface ClusterTarget { addr: string; key?: Buffer }

/** Largest module a run request carries inline (a frame is at most 16 MiB). */
export const MAX_INLINE_MODULE = 16 * 1024 * 1024 - 64 * 1024;

export function clusterTarget(flags: ClusterFlags): ClusterTarget {
  const addr = flags.cluster ?? process.env.FERRY_CLUSTER;
  if (!addr) throw new FerryError('bad-argument', 'which cluster? give --cluster HOST:PORT (any node) or set FERRY_CLUSTER');
  parseAddress(addr);
  const keyFile = flags.keyFile ?? process.env.FERRY_KEY_FILE;
  return { addr, key: keyFile ? loadKey(keyFile) : undefined };
}

export async function connectCluster(t: ClusterTarget): Promise<Connection> {
  const { host, port } = parseAddress(t.addr);
  return connect(host, port, { key: t.key, node: `cli-${process.pid}`, role: 'cli' });
}

/** One control request; resolves with the response header. */
export async function call(conn: Connection, method: string, header: Header = {}, body?: Uint8Array, timeoutMs?: number): Promise<Header> {
  const r = await conn.request('REQUEST', { ...header, method }, body, timeoutMs === undefined ? {} : { timeoutMs });
  return r.header;
}

export interface RemoteRunSpec {
  node?: string;
  program: Program;
  args: string[];
  env: string[];
  dirs: string[];
  argv0?: string;
  files?: 'reopen' | 'home';
}

export interface RemoteRunIO {
  stdout: (b: Buffer) => void;
  stderr: (b: Buffer) => void;
  /** Where stdin comes from; null for none. */
  stdin: NodeJS.ReadableStream | null;
  /** Told the pid once the process has started. */
  started?: (pid: string, node: string) => void;
}

export interface RemoteRunResult { pid: string; node: string; exitCode: number; error?: { code: string; message: string } }

/** Start a process on a node of the cluster and stay attached until it ends. */
export async function remoteRun(conn: Connection, spec: RemoteRunSpec, io: RemoteRunIO): Promise<RemoteRunResult> {
  if (spec.program.bytes.length > MAX_INLINE_MODULE)
    throw new FerryError('unsupported', `${spec.program.path} is ${(spec.program.bytes.length / 1048576).toFixed(1)} MiB: remote run carries modules up to 16 MiB for now`);
  return attach(conn, io, (session) => call(conn, 'run', {
    ...(spec.node ? { node: spec.node } : {}),
    program: spec.program.path, sha256: spec.program.hash, args: spec.args, env: spec.env, dirs: spec.dirs,
    ...(spec.argv0 !== undefined ? { argv0: spec.argv0 } : {}), ...(spec.files ? { files: spec.files } : {}), session,
  }, spec.program.bytes, RUN_TIMEOUT_MS));
}

/** Restore an image as a new process of the node at the other end of conn, attached like a run. */
export async function remoteRestore(conn: Connection, image: Uint8Array, io: RemoteRunIO, name?: string): Promise<RemoteRunResult> {
  const upload = randomUUID();
  await conn.sendStream(image, { kind: 'upload', upload });
  // The file's name comes along for the node's errors ("image x.img is truncated ...").
  return attach(conn, io, (session) => call(conn, 'restore', { session, upload, ...(name === undefined ? {} : { name }) }, undefined, RUN_TIMEOUT_MS));
}

/** Open a stdio session, start the process with `start`, relay stdio until it ends. */
async function attach(conn: Connection, io: RemoteRunIO, start: (session: string) => Promise<Header>): Promise<RemoteRunResult> {
  const session = randomUUID();
  let exited!: (r: { code: number; error?: { code: string; message: string } }) => void;
  const exit = new Promise<{ code: number; error?: { code: string; message: string } }>((r) => (exited = r));
  conn.on('PROC_OUTPUT', (m) => {
    if (m.header.session !== session) return;
    (m.header.fd === 2 ? io.stderr : io.stdout)(m.body);
  });
  conn.on('PROC_EXIT', (m) => {
    if (m.header.session !== session) return;
    const e = m.header.error as { code?: unknown; message?: unknown } | undefined;
    exited({
      code: typeof m.header.code === 'number' ? m.header.code : 1,
      error: e && typeof e.message === 'string' ? { code: String(e.code ?? 'remote-error'), message: e.message } : undefined,
    });
  });
  const off = conn.onClose((err) => exited({ code: 1, error: { code: 'connection-lost', message: `lost the connection to the cluster${err ? `: ${err.message}` : ''}` } }));
  const r = await start(session);
  const pid = String(r.pid), node = String(r.node);
  io.started?.(pid, node);
  let stopInput = false;
  if (io.stdin) {
    const src = io.stdin;
    void (async () => {
      try {
        for await (const chunk of src as AsyncIterable<Buffer | string>) {
          if (stopInput || !conn.isOpen) return;
          await conn.send('PROC_INPUT', { session }, typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
        }
        if (!stopInput && conn.isOpen) await conn.send('PROC_INPUT', { session, eof: true });
      } catch { /* the run ends through PROC_EXIT or the connection closing */ }
    })();
  } else {
    void conn.send('PROC_INPUT', { session, eof: true }).catch(() => {});
  }
  const result = await exit;
  stopInput = true;
  off();
  return { pid, node, exitCode: result.code, error: result.error };
}

/** A connection straight to the node running pid (located through any node). */
export async function connectToProcess(t: ClusterTarget, pid: string): Promise<{ conn: Connection; node: string }> {
  const first = await connectCluster(t);
  let r: Header;
  try { r = await call(first, 'locate', { pid }); } catch (e) { first.destroy(); throw e; }
  if (String(r.addr) === t.addr) return { conn: first, node: String(r.node) };
  first.destroy();
  return { conn: await connectCluster({ ...t, addr: String(r.addr) }), node: String(r.node) };
}

/** A connection straight to a named node. */
export async function connectToNode(t: ClusterTarget, name: string): Promise<Connection> {
  const first = await connectCluster(t);
  let members: { name: string; addr: string; state: string; lastSeenMsAgo: number }[];
  try { members = (await call(first, 'nodes')).members as never; } catch (e) { first.destroy(); throw e; }
  const m = members.find((x) => x.name === name);
  if (!m) { first.destroy(); throw new FerryError('no-such-node', `no node named ${name} in the cluster (known: ${members.map((x) => x.name).join(', ')})`); }
  if (m.state !== 'up') { first.destroy(); throw new FerryError('node-down', `node ${notUp(name, m.state, m.lastSeenMsAgo)}`); }
  if (m.addr === t.addr) return first;
  first.destroy();
  return connectCluster({ ...t, addr: m.addr });
}
