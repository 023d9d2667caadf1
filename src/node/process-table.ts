// The node's processes: each a WasmProcess (worker thread over shared memory)
// with a location-independent pid `<origin-node>/<n>`, its home node, its
// state, and a sink that carries its numbered stdout/stderr writes and exit
// to its home node (home.ts). A process leaves the table when it ends or
// moves to another node; the table remembers recently gone pids so that
// `kill` on one says so. It also hands processes to the migration engine
// (sourceProcess) and takes them in from it (adopt).
import { statSync } from 'node:fs';
import { encodeImage, type ProcessImage } from '../image/index.ts';
import type { Json } from '../image/types.ts';
import type { SourceProcess } from '../migration/engine.ts';
import type { LoadedModule } from '../vm/cache.ts';
import type { Captured, ProcessOptions } from '../vm/process.ts';
import { imageFromCapture, resumeFromImage, resumeInMemory } from '../vm/snapshot.ts';
import { MemoryImage } from '../image/memory.ts';
import { resolve } from 'node:path';
import { PassThrough } from 'node:stream';
import { FerryError } from '../errors.ts';
import { loadPrepared } from '../vm/cache.ts';
import { WASM_PAGE } from '../vm/layout.ts';
import { WasmProcess } from '../vm/process.ts';
import type { Program } from '../vm/snapshot.ts';
import { initialWasiState } from '../wasi/host.ts';

export type NodeProcessState = 'preparing' | 'starting' | 'running' | 'stopping' | 'frozen' | 'migrating' | 'exited' | 'failed' | 'killed';

/** How a process reaches its files after a move: reopen the same paths (shared file
 *  systems), or have the home node serve them (Sprite). */
export type FilePolicy = 'reopen' | 'home';

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
  /** Guest memory: its memory size as the program sees it (memory.size), the most it has had. */
  memoryBytes: number;
  migrations: number;
  sha256: string;
  files: FilePolicy;
  /** Other nodes holding process information it still needs (its home, with --files home). */
  residualDependencies: string[];
}

/** Where a process's output and exit go: writes are numbered from 0 over its whole life. */
export interface ProcessSink {
  output(pid: string, seq: number, fd: 1 | 2, data: Uint8Array): void;
  /** seq: how many writes came before the exit. */
  exit(pid: string, seq: number, code: number, error?: { code: string; message: string }): void;
}

export interface StartSpec {
  pid: string;
  program: Program;
  files?: FilePolicy;
  args: string[];
  env: string[];
  /** HOST::GUEST or DIR, paths on this node. */
  dirs: string[];
  argv0?: string;
  sink: ProcessSink;
}

/** What holds a process for a while, for the errors of whoever else asks for it meanwhile. */
interface Hold {
  /** "moving to b", "being checkpointed", ... */
  doing: string;
  /** What the asker can do about it (none: it ends by itself). */
  hint?: string;
}

const heldError = (pid: string, h: Hold): FerryError =>
  new FerryError('busy', `process ${pid} is ${h.doing}; ${h.hint ?? 'try again in a moment'}`);

interface Entry {
  info: ProcessInfo;
  program: Program;
  proc?: WasmProcess;
  stdin: PassThrough;
  /** Absolute offset of the next stdin byte this node expects (see home.ts). */
  stdinOffset: number;
  sink: ProcessSink;
  /** Number of the next output write. */
  seq: number;
  initialBytes: number;
  ended: boolean;
  /** What holds it now (a migration, a checkpoint, a variant switch); null: nothing. */
  held: Hold | null;
  /** Nodes holding pages it has not received (post-copy). */
  residual: string[];
  /** The variant it ran before a migration switched it to 'tracked' (it returns to it if
   *  the migration fails while it is frozen). */
  steady?: LoadedModule;
}

/** What travels with a process besides its image's standard sections (meta.extra). */
export interface ProcessExtra {
  args: string[];
  home: string;
  startedAt: string;
  migrations: number;
  outputSeq: number;
  files: FilePolicy;
}

/** A process arriving by migration. */
export interface AdoptSpec {
  image: ProcessImage;
  program: Program;
  loaded: LoadedModule;
  memory: WebAssembly.Memory;
  sink: ProcessSink;
  /** Files served by the home node (--files home, away from home). */
  fileOps?: ProcessOptions['fileOps'];
  /** Pages not here yet are fetched this way (post-copy). */
  onFault?: ProcessOptions['onFault'];
  /** Nodes it depends on until post-processing ends. */
  residual?: string[];
  /** A worker that instantiated its module over `memory` during the migration. */
  prepared?: ProcessOptions['prepared'];
}

const RECENT = 256;

export class ProcessTable {
  private readonly entries = new Map<string, Entry>();
  private readonly recent = new Map<string, { how: string; moved: boolean }>(); // pid -> how it ended, or where it went
  private next = 1;
  private readonly endListeners = new Set<(pid: string, how: string) => void>();

  constructor(private readonly node: string, private readonly log?: (m: string) => void) {}

  get size(): number { return this.entries.size; }

  /** Called when a process leaves this table: it ended (exited, failed, killed) or moved away. */
  onEnded(fn: (pid: string, how: string) => void): () => void {
    this.endListeners.add(fn);
    return () => this.endListeners.delete(fn);
  }

  private notifyEnded(pid: string, how: string): void {
    for (const fn of this.endListeners) { try { fn(pid, how); } catch { /* a listener must not break the table */ } }
  }

  /** A fresh pid of this (origin) node. */
  allocatePid(): string { return `${this.node}/${this.next++}`; }

  /** Start the program under a pid from allocatePid (preparing it first if the cache lacks it). Resolves once it is starting. */
  async start(spec: StartSpec): Promise<ProcessInfo> {
    const preopens = spec.dirs.map(parseDir);
    const env = spec.env.map((e) => {
      if (!e.includes('=')) throw new FerryError('bad-argument', `--env ${e}: expected KEY=VALUE`);
      return e;
    });
    const pid = spec.pid;
    const info: ProcessInfo = {
      pid, program: spec.program.path, args: spec.args, node: this.node, home: this.node, state: 'preparing',
      startedAt: new Date().toISOString(), memoryBytes: 0, migrations: 0, sha256: spec.program.hash,
      files: spec.files ?? 'reopen', residualDependencies: [],
    };
    const entry = this.newEntry(info, spec.program, spec.sink);
    this.entries.set(pid, entry);
    try {
      const loaded = await loadPrepared(spec.program.bytes, 'plain', spec.program.hash, () => this.log?.(`preparing ${spec.program.path} (${spec.program.hash.slice(0, 12)}) for ${pid}`));
      if (entry.ended) throw new FerryError('killed', `process ${pid} was killed before it started`);
      entry.initialBytes = loaded.meta.initialPages * WASM_PAGE;
      const wasi = initialWasiState({ args: [spec.argv0 ?? spec.program.path, ...spec.args], env, preopens });
      this.attach(entry, WasmProcess.start(loaded, wasi, { stdio: 'message', stdin: entry.stdin }));
      this.log?.(`started ${pid}: ${spec.program.path} ${spec.args.join(' ')}`);
      return this.snapshot(entry);
    } catch (e) {
      this.entries.delete(pid);
      entry.ended = true;
      throw e;
    }
  }

  /** Take in a process that migrated here (its pages are in spec.memory). Resolves once it
   *  runs: `runningAt` is when its guest ran again (hostMs; null if it ended first), which
   *  ends a migration's down time. */
  async adopt(spec: AdoptSpec): Promise<{ info: ProcessInfo; runningAt: number | null }> {
    const img = spec.image;
    const x = img.meta.extra as unknown as ProcessExtra;
    if (this.entries.has(img.meta.pid)) throw new FerryError('duplicate-process', `process ${img.meta.pid} already runs on ${this.node}`);
    const info: ProcessInfo = {
      pid: img.meta.pid, program: img.meta.program, args: x.args, node: this.node, home: x.home, state: 'starting',
      startedAt: x.startedAt, memoryBytes: 0, migrations: x.migrations + 1, sha256: img.module.sha256,
      files: x.files, residualDependencies: [],
    };
    const entry = this.newEntry(info, spec.program, spec.sink);
    entry.seq = x.outputSeq;
    entry.stdinOffset = img.wasi.stdinTakenBytes ?? 0;
    entry.initialBytes = Math.max(spec.loaded.meta.initialPages * WASM_PAGE, img.memory.logicalBytes);
    entry.residual = spec.residual ?? [];
    const runningAt = await this.run(entry, async () => resumeInMemory(img, spec.loaded, spec.memory, { stdio: 'message', stdin: entry.stdin, fileOps: spec.fileOps, onFault: spec.onFault, prepared: spec.prepared }));
    this.log?.(`${info.pid} arrived (migration ${info.migrations})`);
    return { info: this.snapshot(entry), runningAt };
  }

  /** Restore a checkpoint image as a new process of this node (a new pid, a new stdin). */
  async restore(spec: { pid: string; image: ProcessImage; program: Program; sink: ProcessSink }): Promise<ProcessInfo> {
    const img = spec.image;
    const x = img.meta.extra as Partial<ProcessExtra>;
    const info: ProcessInfo = {
      pid: spec.pid, program: img.meta.program, args: Array.isArray(x.args) ? x.args : [], node: this.node, home: this.node, state: 'starting',
      startedAt: new Date().toISOString(), memoryBytes: 0, migrations: 0, sha256: img.module.sha256,
      files: x.files === 'home' ? 'home' : 'reopen', residualDependencies: [],
    };
    const entry = this.newEntry(info, spec.program, spec.sink);
    img.wasi.stdinTakenBytes = 0; // stdin starts afresh from the restoring client
    entry.initialBytes = img.memory.logicalBytes;
    await this.run(entry, async () => (await resumeFromImage(img, { stdio: 'message', stdin: entry.stdin })).proc);
    this.log?.(`${info.pid} restored from an image of ${img.meta.pid}`);
    return this.snapshot(entry);
  }

  /** Enter a resumed process in the table; resolves once it runs (with when it ran) or has
   *  already ended (null). */
  private async run(entry: Entry, make: () => Promise<WasmProcess>): Promise<number | null> {
    const pid = entry.info.pid;
    this.entries.set(pid, entry);
    this.recent.delete(pid);
    try {
      const proc = await make();
      this.attach(entry, proc);
      // Running means the guest runs again (its worker says so), also in a prepared worker:
      // a migration's down time ends here, not when the start was merely posted.
      await new Promise<void>((res, rej) => { proc.once('running', res); proc.exited.then(() => res(), rej); });
      return proc.runningAt;
    } catch (e) {
      this.entries.delete(pid);
      entry.ended = true;
      throw e;
    }
  }

  /** The process as the migration engine sees it; marks it moving. */
  sourceProcess(pid: string, to: string): SourceProcess {
    const e = this.entries.get(pid);
    if (!e || e.ended) throw this.missing(pid);
    if (e.held) throw heldError(pid, e.held);
    if (!e.proc || (e.proc.state !== 'running' && e.proc.state !== 'starting')) throw new FerryError('busy', `process ${pid} is ${e.info.state}: it can move once it runs`);
    e.held = { doing: `moving to ${to}`, hint: `\`ferry migrate --cancel ${pid}\` stops the migration` };
    const proc = e.proc;
    this.snapshot(e); // records the address space (the snapshot skips a moving process)
    return {
      pid, memory: proc.bytes,
      freeze: async () => { e.info.state = 'migrating'; return proc.freeze(); },
      resume: () => {
        e.held = null;
        proc.throttle(0);
        if (!e.ended && proc.state === 'frozen') {
          const steady = e.steady; // back to the variant it ran before (a running one stays tracked)
          e.steady = undefined;
          proc.continue(steady);
          e.info.state = 'running';
        }
      },
      ensureTracked: () => this.ensureTracked(e),
      tracksWrites: () => proc.loaded.meta.variant !== 'plain',
      release: async () => {
        e.ended = true;
        this.entries.delete(pid);
        this.remember(pid, `moved to ${to}`, true);
        this.notifyEnded(pid, `moved to ${to}`);
        e.stdin.destroy();
        await proc.kill();
        this.log?.(`${pid} moved to ${to}`);
      },
      stateImage: (frozen: Captured, pageSize: number) => this.stateImage(e, frozen, pageSize),
      addressSpaceBytes: () => this.snapshot(e).memoryBytes,
      throttle: (share: number) => proc.throttle(share),
    };
  }

  /** Dirty tracking from now on (pre-copy): load the tracked variant while the process runs,
   *  then freeze it for a moment and carry on in that variant (same worker, same memory;
   *  every page counts as dirty). A process already tracking stays as it is. */
  private async ensureTracked(e: Entry): Promise<void> {
    const proc = e.proc;
    if (!proc || proc.loaded.meta.variant !== 'plain') return;
    const tracked = await loadPrepared(e.program.bytes, 'tracked', e.program.hash, () => this.log?.(`preparing the tracked variant of ${e.program.path} for ${e.info.pid}`));
    if (e.ended || e.proc !== proc || proc.loaded.meta.variant !== 'plain') return;
    const steady = proc.loaded;
    if (!(await proc.switchVariant(tracked))) return; // it ended meanwhile: the migration's freeze says so
    e.steady = steady;
    this.log?.(`${e.info.pid} now tracks dirty pages`);
  }

  /** The nodes a process running here still needs for its pages (freeze-free: the file server after the hand-over). */
  setResidual(pid: string, nodes: string[]): void {
    const e = this.entries.get(pid);
    if (e && !e.ended) e.residual = [...nodes];
  }

  /** Every page is here (post-copy done): freeze it for a moment and carry on in the plain
   *  variant (no present checks, no dirty marks), in a fresh worker over the same memory. */
  async rehost(pid: string, loaded: LoadedModule): Promise<void> {
    const e = this.entries.get(pid);
    e && (e.residual = []);
    if (!e || e.ended || !e.proc || e.held) return; // it ended, or moves on: nothing to swap
    if (e.proc.loaded === loaded) return; // already in the tracked variant
    e.held = { doing: `switching to the ${loaded.meta.variant} variant` };
    const old = e.proc;
    try {
      const cap = await old.freeze().catch(() => null);
      if (!cap) return; // it ended meanwhile
      const proc = WasmProcess.resume(loaded, old.memory, { ...cap.exec }, cap.wasi, { stdio: 'message', stdin: e.stdin });
      this.attach(e, proc);
      await old.kill();
      this.log?.(`${pid} has all its pages: now in the ${loaded.meta.variant} variant`);
    } finally { e.held = null; }
  }

  /** Freeze a process for a moment and return its whole image (module embedded). */
  async checkpoint(pid: string): Promise<Buffer[]> {
    const e = this.entries.get(pid);
    if (!e || e.ended) throw this.missing(pid);
    if (e.held) throw heldError(pid, e.held);
    if (!e.proc) throw new FerryError('busy', `process ${pid} is ${e.info.state}; try again`);
    e.held = { doing: 'being checkpointed' };
    try {
      const cap = await e.proc.freeze();
      try {
        // Copies: the encoder's page chunks are views of the memory, which changes once the process continues.
        return encodeImage(imageFromCapture(cap, e.program, { pid, node: this.node, reason: 'checkpoint', extra: this.extra(e) })).map((c) => Buffer.from(c));
      } finally { e.proc.continue(); }
    } finally { e.held = null; }
  }

  /** The original module bytes of a process (a destination without them asks). */
  programBytes(pid: string): Uint8Array {
    const e = this.entries.get(pid);
    if (!e) throw this.missing(pid);
    return e.program.bytes;
  }

  list(): ProcessInfo[] {
    return [...this.entries.values()].map((e) => this.snapshot(e));
  }

  get(pid: string): ProcessInfo | undefined {
    const e = this.entries.get(pid);
    return e && this.snapshot(e);
  }

  /** How a pid ended here, if it did recently (not if it moved on). */
  ended(pid: string): string | undefined {
    const r = this.recent.get(pid);
    return r && !r.moved ? r.how : undefined;
  }

  /** Stdin for a process: `data` starts at absolute offset `offset` (resends overlap). */
  inputAt(pid: string, offset: number, data: Uint8Array, eof: boolean): void {
    const e = this.entries.get(pid);
    if (!e || e.ended || e.stdin.writableEnded) return;
    if (offset > e.stdinOffset) { this.log?.(`stdin for ${pid} skips from ${e.stdinOffset} to ${offset}: dropped`); return; }
    const fresh = data.subarray(Math.min(data.length, e.stdinOffset - offset));
    if (fresh.length) { e.stdin.write(fresh); e.stdinOffset += fresh.length; }
    if (eof) e.stdin.end();
  }

  /** Kill a process of this table; the client sees exit code 137 (and why, if given). */
  async kill(pid: string, why?: string): Promise<ProcessInfo> {
    const e = this.entries.get(pid);
    if (!e) throw this.missing(pid);
    if (e.held) throw heldError(pid, e.held);
    const info = this.snapshot(e);
    this.finish(e, 'killed', 137, { code: 'killed', message: `process ${pid} was killed${why ? `: ${why}` : ''}` });
    await e.proc?.kill();
    return { ...info, state: 'killed' };
  }

  async killAll(why: string): Promise<void> {
    await Promise.all([...this.entries.keys()].map((pid) => this.kill(pid, why).catch(() => {})));
  }

  private finish(e: Entry, state: 'exited' | 'failed' | 'killed', code: number, error?: { code: string; message: string }): void {
    if (e.ended) return;
    e.ended = true;
    e.info.state = state;
    this.entries.delete(e.info.pid);
    this.remember(e.info.pid, state === 'exited' ? `exited (code ${code})` : state === 'killed' ? 'been killed' : `failed (${error?.message ?? 'error'})`);
    this.log?.(`${e.info.pid} ${state} (exit code ${code})`);
    try { e.sink.exit(e.info.pid, e.seq, code, error); } catch { /* a sink must not break the table */ }
    this.notifyEnded(e.info.pid, state === 'exited' ? `exited (code ${code})` : state === 'killed' ? 'was killed' : `failed (${error?.message ?? 'error'})`);
  }

  private remember(pid: string, how: string, moved = false): void {
    this.recent.delete(pid);
    this.recent.set(pid, { how, moved });
    if (this.recent.size > RECENT) this.recent.delete(this.recent.keys().next().value!);
  }

  private missing(pid: string): FerryError {
    const how = this.recent.get(pid)?.how;
    return new FerryError('no-such-process', how ? `process ${pid} has already ${how}` : `no process ${pid} on node ${this.node}`);
  }

  private newEntry(info: ProcessInfo, program: Program, sink: ProcessSink): Entry {
    return { info, program, stdin: new PassThrough(), stdinOffset: 0, sink, seq: 0, initialBytes: 0, ended: false, held: null, residual: [] };
  }

  /** Wire a running WasmProcess to its entry: output numbering, state, exit. */
  private attach(entry: Entry, proc: WasmProcess): void {
    const pid = entry.info.pid;
    entry.proc = proc;
    proc.on('running', () => { if (!entry.ended && !entry.held) entry.info.state = 'running'; });
    proc.on('stdout', (d: Uint8Array) => entry.sink.output(pid, entry.seq++, 1, d));
    proc.on('stderr', (d: Uint8Array) => entry.sink.output(pid, entry.seq++, 2, d));
    proc.exited.then(
      (code) => { if (entry.proc === proc) this.finish(entry, 'exited', code); },
      (e: Error) => {
        if (entry.ended || entry.proc !== proc) return; // killed or moved: already accounted for
        const fe = e instanceof FerryError ? e : new FerryError('runtime', e.message);
        this.finish(entry, 'failed', fe.code === 'trap' ? 134 : 1, { code: fe.code, message: fe.message });
      },
    );
  }

  private extra(e: Entry): Record<string, Json> {
    const x: ProcessExtra = { args: e.info.args, home: e.info.home, startedAt: e.info.startedAt, migrations: e.info.migrations, outputSeq: e.seq, files: e.info.files };
    return x as unknown as Record<string, Json>;
  }

  /** The state a migration carries: everything but the pages (they travel as batches). */
  private stateImage(e: Entry, frozen: Captured, pageSize: number): Buffer[] {
    const input = imageFromCapture(frozen, e.program, { pid: e.info.pid, node: this.node, reason: 'migration', embedModule: false, pageSize, extra: this.extra(e) });
    const pages = frozen.logicalBytes / pageSize;
    input.memory = new MemoryImage(pageSize, frozen.logicalBytes, new Uint8Array(Math.ceil(pages / 8)), new Uint8Array(0));
    return encodeImage(input);
  }

  private snapshot(e: Entry): ProcessInfo {
    const info = e.info;
    if (e.proc && !e.ended && !e.held) {
      info.state = e.proc.state === 'running' || e.proc.state === 'starting' ? info.state : e.proc.state;
      info.memoryBytes = Math.max(info.memoryBytes, e.initialBytes, e.proc.logicalBytes);
    }
    const residualDependencies = [...new Set([...(info.files === 'home' && info.home !== this.node ? [info.home] : []), ...e.residual])];
    return { ...info, args: [...info.args], residualDependencies };
  }
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
