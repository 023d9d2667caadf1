// The node's processes: each a WasmProcess (worker thread over shared memory)
// with a location-independent pid `<origin-node>/<n>`, its home node, its
// state, and a sink that carries its stdout/stderr and exit to whoever ran it
// (see stdio.ts). A process leaves the table when it ends; the table remembers
// recently ended pids so that `kill` on one says so.
import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import { PassThrough } from 'node:stream';
import { FerryError } from '../errors.ts';
import { loadPrepared } from '../vm/cache.ts';
import { DIRTY_MAP, TRACK_PAGE, WASM_PAGE, MAX_LOGICAL_PAGES } from '../vm/layout.ts';
import { WasmProcess } from '../vm/process.ts';
import type { Program } from '../vm/snapshot.ts';
import { initialWasiState } from '../wasi/host.ts';

export type NodeProcessState = 'preparing' | 'starting' | 'running' | 'stopping' | 'frozen' | 'exited' | 'failed' | 'killed';

/** What `ferry ps --json` shows for each process. */
export interface ProcessInfo {
  pid: string;
  /** The program's path as given to `ferry run`. */
  program: string;
  args: string[];
  /** Where it runs now. */
  node: string;
  /** Where it was started: its stdio lives there. */
  home: string;
  state: NodeProcessState;
  startedAt: string;
  /** Guest memory in use: the highest page the program has touched, at least its initial memory. */
  memoryBytes: number;
  migrations: number;
  sha256: string;
}

/** Where a process's output and exit go. */
export interface ProcessSink {
  output(pid: string, fd: 1 | 2, data: Uint8Array): void;
  exit(pid: string, code: number, error?: { code: string; message: string }): void;
}

export interface StartSpec {
  program: Program;
  args: string[];
  env: string[];
  /** HOST::GUEST or DIR, paths on this node. */
  dirs: string[];
  argv0?: string;
  sink: ProcessSink;
}

interface Entry {
  info: ProcessInfo;
  proc?: WasmProcess;
  stdin: PassThrough;
  sink: ProcessSink;
  initialBytes: number;
  ended: boolean;
}

const RECENT = 256;

export class ProcessTable {
  private readonly entries = new Map<string, Entry>();
  private readonly recent = new Map<string, string>(); // pid -> how it ended
  private next = 1;

  constructor(private readonly node: string, private readonly log?: (m: string) => void) {}

  get size(): number { return this.entries.size; }

  /** Allocate a pid and start the program (preparing it first if the cache lacks it). Resolves once it is starting. */
  async start(spec: StartSpec): Promise<ProcessInfo> {
    const preopens = spec.dirs.map(parseDir);
    const env = spec.env.map((e) => {
      if (!e.includes('=')) throw new FerryError('bad-argument', `--env ${e}: expected KEY=VALUE`);
      return e;
    });
    const pid = `${this.node}/${this.next++}`;
    const info: ProcessInfo = {
      pid, program: spec.program.path, args: spec.args, node: this.node, home: this.node, state: 'preparing',
      startedAt: new Date().toISOString(), memoryBytes: 0, migrations: 0, sha256: spec.program.hash,
    };
    const entry: Entry = { info, stdin: new PassThrough(), sink: spec.sink, initialBytes: 0, ended: false };
    this.entries.set(pid, entry);
    try {
      const loaded = await loadPrepared(spec.program.bytes, 'tracked', spec.program.hash, () => this.log?.(`preparing ${spec.program.path} (${spec.program.hash.slice(0, 12)}) for ${pid}`));
      if (entry.ended) throw new FerryError('killed', `process ${pid} was killed before it started`);
      entry.initialBytes = loaded.meta.initialPages * WASM_PAGE;
      const wasi = initialWasiState({ args: [spec.argv0 ?? spec.program.path, ...spec.args], env, preopens });
      const proc = WasmProcess.start(loaded, wasi, { stdio: 'message', stdin: entry.stdin });
      entry.proc = proc;
      info.state = 'starting';
      proc.on('running', () => { if (!entry.ended) info.state = 'running'; });
      proc.on('stdout', (d: Uint8Array) => entry.sink.output(pid, 1, d));
      proc.on('stderr', (d: Uint8Array) => entry.sink.output(pid, 2, d));
      proc.exited.then(
        (code) => this.finish(entry, 'exited', code),
        (e: Error) => {
          if (entry.ended) return; // killed: already reported
          const fe = e instanceof FerryError ? e : new FerryError('runtime', e.message);
          this.finish(entry, 'failed', fe.code === 'trap' ? 134 : 1, { code: fe.code, message: fe.message });
        },
      );
      this.log?.(`started ${pid}: ${spec.program.path} ${spec.args.join(' ')}`);
      return this.snapshot(entry);
    } catch (e) {
      this.entries.delete(pid);
      entry.ended = true;
      throw e;
    }
  }

  list(): ProcessInfo[] {
    return [...this.entries.values()].map((e) => this.snapshot(e));
  }

  get(pid: string): ProcessInfo | undefined {
    const e = this.entries.get(pid);
    return e && this.snapshot(e);
  }

  /** Why a pid is not in the table, if it was here recently. */
  ended(pid: string): string | undefined { return this.recent.get(pid); }

  /** Stdin for a process (from its client). */
  input(pid: string, data: Uint8Array | undefined, eof: boolean): void {
    const e = this.entries.get(pid);
    if (!e || e.ended) return;
    if (data && data.length) e.stdin.write(data);
    if (eof) e.stdin.end();
  }

  /** Kill a process of this table; the client sees exit code 137. */
  async kill(pid: string): Promise<ProcessInfo> {
    const e = this.entries.get(pid);
    if (!e) {
      const how = this.recent.get(pid);
      throw new FerryError('no-such-process', how ? `process ${pid} has already ${how}` : `no process ${pid} on node ${this.node}`);
    }
    const info = this.snapshot(e);
    this.finish(e, 'killed', 137, { code: 'killed', message: `process ${pid} was killed` });
    await e.proc?.kill();
    return { ...info, state: 'killed' };
  }

  async killAll(): Promise<void> {
    await Promise.all([...this.entries.keys()].map((pid) => this.kill(pid).catch(() => {})));
  }

  private finish(e: Entry, state: 'exited' | 'failed' | 'killed', code: number, error?: { code: string; message: string }): void {
    if (e.ended) return;
    e.ended = true;
    e.info.state = state;
    this.entries.delete(e.info.pid);
    this.recent.set(e.info.pid, state === 'exited' ? `exited (code ${code})` : state === 'killed' ? 'been killed' : `failed (${error?.message ?? 'error'})`);
    if (this.recent.size > RECENT) this.recent.delete(this.recent.keys().next().value!);
    this.log?.(`${e.info.pid} ${state} (exit code ${code})`);
    try { e.sink.exit(e.info.pid, code, error); } catch { /* a sink must not break the table */ }
  }

  private snapshot(e: Entry): ProcessInfo {
    const info = e.info;
    if (e.proc && !e.ended) {
      info.state = e.proc.state === 'running' || e.proc.state === 'starting' ? info.state : e.proc.state;
      info.memoryBytes = Math.max(info.memoryBytes, e.initialBytes, touchedBytes(e.proc));
    }
    return { ...info, args: [...info.args] };
  }
}

/** The end of the highest 4 KiB page the program has written, rounded up to a wasm page. */
function touchedBytes(p: WasmProcess): number {
  const map = p.bytes.subarray(DIRTY_MAP, DIRTY_MAP + (MAX_LOGICAL_PAGES * WASM_PAGE) / TRACK_PAGE);
  const last = map.lastIndexOf(1);
  if (last < 0) return 0;
  return Math.ceil(((last + 1) * TRACK_PAGE) / WASM_PAGE) * WASM_PAGE;
}

/** --dir HOST::GUEST (or DIR): a directory on this node. */
export function parseDir(spec: string): { host: string; guest: string } {
  const [host, guest] = spec.includes('::') ? spec.split('::', 2) : [spec, spec];
  if (!host || !guest) throw new FerryError('bad-argument', `--dir ${spec}: expected HOST::GUEST`);
  let st;
  try { st = statSync(host); } catch { throw new FerryError('bad-argument', `--dir ${spec}: ${host} does not exist on this node`); }
  if (!st.isDirectory()) throw new FerryError('bad-argument', `--dir ${spec}: ${host} is not a directory`);
  return { host: resolve(host), guest };
}
