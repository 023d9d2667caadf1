// The migration engine, source side: owns the state machine, the metrics and
// the order of things; the strategy decides which pages move when; the
// channel (built by the node over the transport) carries them.
//
// Atomicity: the process stays on the source, frozen, until the destination
// confirms it runs there (commit). Any failure before that resumes it on the
// source, so it runs exactly once. Cancelling is possible until the commit
// request is sent; after that the outcome belongs to the destination.
import { EventEmitter } from 'node:events';
import { FerryError } from '../errors.ts';
import type { Captured } from '../vm/process.ts';
import { encodePageBatch, encodePageBatchParts, isZeroPage } from '../memory/page-batch.ts';
import { MetricsRecorder, type DowntimeEnd, type MigrationMetrics, type Phase } from './metrics.ts';
import { MigrationStateMachine } from './state.ts';
import type { FileServerView, SourceContext, Strategy } from './strategy.ts';
import { downtimeBudget, roundsEnd, switchesToPostCopy, throttleFor } from './convergence.ts';
import { DirtyPages } from '../memory/dirty.ts';
import type { FaultStats } from './destination.ts';
import type { SendOptions } from './strategy.ts';
import { pushRest } from './post-copy.ts';
import type { Codec } from '../memory/page-codec.ts';

/** The destination, as the engine sees it. Implemented by the node over a connection. */
export interface MigrationChannel {
  /** Bytes/s of the link (its shaping), null when unshaped. */
  readonly linkBytesPerSec: number | null;
  /** Largest page batch per frame, in bytes. */
  readonly batchBytes: number;
  /** The destination gets the module, compiles it, readies memory and a worker. Returns bytes sent. */
  setup(): Promise<number>;
  /** One page batch (one buffer, or parts to send as they are); resolves when handed to the link. Returns bytes sent. */
  sendPages(batch: Buffer | readonly Uint8Array[]): Promise<number>;
  /** Send the process state and ask the destination to run it (one round trip). Resolves once
   *  it runs there, with the bytes sent and when it ran there again (the down time's end; on
   *  this process's performance.now() clock, node/downtime-end.ts); throws a FerryError
   *  with code 'migration-aborted' when it definitely does not (then the source resumes it). `postcopy`: a pre-copy switched
   *  to post-copy; `stale` is a bitmap of the pages the destination must not use (absent). */
  commit(state: Buffer[], postcopy?: { stale: Uint8Array }): Promise<{ bytes: number; ranAgain: DowntimeEnd }>;
  /** Serve the destination's page faults from the source's memory (post-copy, demand paging, assisted post-copy). */
  serveFaults(read: (pages: number[]) => Buffer | readonly Uint8Array[] | PageAnswer): void;
  /** The link broke during post-processing: reach the destination again on a new connection
   *  (bounded retries); resolves with the pages it still lacks. */
  recover?(): Promise<number[]>;
  /** Post-processing done on this side: resolves once the destination holds every page, with its fault statistics. */
  finish(): Promise<{ bytes: number; stats: FaultStats }>;
  /** Page batches compressed so far (--compress): raw bytes and their bytes on the wire. */
  compressionStats?(): { codec: string; rawBytes: number; wireBytes: number };
  /** Tell the destination to drop everything it has (best effort). */
  abort(reason: FerryError): void;
  close(): void;
  /** Freeze-free: the destination faults to `holder` (the file server) from now on. False
   *  when the process no longer depends on the source. */
  handOver?(holder: string): Promise<boolean>;
  /** Resolves once the running node no longer needs the pages this source serves. */
  served?(): Promise<string> | undefined;
}

/** A fault's answer with pages sent as "not modified" or "in flight" (assisted post-copy):
 *  `parts` is the page batch of the pages sent. */
export interface PageAnswer { parts: readonly Uint8Array[]; notModified: number[]; inFlight: number[] }

/** A file server, as the engine sees it (src/node/file-server.ts: a connection of its own). */
export interface FileServerLink {
  readonly node: string;
  /** Largest page batch per request, in bytes. */
  readonly batchBytes: number;
  /** Bytes sent to it so far. */
  readonly bytesSent: number;
  /** Open the process's store there (setup: it must accept before the process freezes). */
  open(): Promise<void>;
  /** One page batch; resolves once stored. */
  store(batch: Buffer): Promise<void>;
  /** Every page is there: it serves the running node from now on. */
  seal(addressSpacePages: number): Promise<void>;
  /** Drop the store (best effort). */
  drop(reason: string): void;
  close(): void;
}

/** Page batches a flush keeps in flight to the file server. */
const FLUSH_WINDOW = 4;

/** The process being moved, as the engine sees it. Implemented by the node's process table. */
export interface SourceProcess {
  readonly pid: string;
  readonly memory: Uint8Array;
  freeze(): Promise<Captured>;
  /** The migration failed or was cancelled: carry on here. */
  resume(): void;
  /** It runs on the destination now: drop it here. */
  release(): Promise<void>;
  /** Its address space as seen while it runs (bytes): everything it may have written. */
  addressSpaceBytes(): number;
  /** Auto-converge: sleep this share of the time (0 = full speed). */
  throttle?(share: number): void;
  /** Mark dirty pages from now on (a process runs without dirty tracking until asked). */
  ensureTracked?(): Promise<void>;
  /** Whether its dirty map holds its writes (false: it ran untracked, the map says nothing). */
  tracksWrites?(): boolean;
  /** Its state (everything but the pages) as an image, for the destination. */
  stateImage(frozen: Captured, pageSize: number): Buffer[];
}

export interface MigrationSpec {
  id: string;
  from: string;
  to: string;
  strategy: Strategy;
  process: SourceProcess;
  channel: MigrationChannel;
  pageSize: number;
  options?: MigrationOptions;
  /** The file server (strategies with `fileServer`). */
  fileServer?: FileServerLink;
  log?: (m: string) => void;
}

/** Knobs of a migration (QEMU's names where they exist). */
export interface MigrationOptions {
  /** Pre-copy: at most this many rounds while running (thesis: 6). */
  maxRounds?: number;
  /** Pre-copy: freeze once what is left would take at most this long to send (QEMU's downtime-limit). */
  downtimeLimitMs?: number;
  /** Pre-copy: the thesis's rule instead (dirty set under 30% of the address space). */
  thesisLimits?: boolean;
  /** Throttle the process while it dirties memory faster than the link drains it. */
  autoConverge?: boolean;
  /** Pre-copy: not converged after this many rounds, switch to post-copy (the state alone
   *  moves at the freeze; the destination faults in what it lacks, the source pushes it). */
  postcopyAfterRounds?: number;
  /** Compress page batches on the wire (src/memory/page-codec.ts); 'none' by default. */
  compress?: Codec;
}

export const DEFAULT_MAX_ROUNDS = 6;
export const DEFAULT_DOWNTIME_LIMIT_MS = 300;
/** Errors that mean the link broke (post-processing recovers from these). */
const LINK_ERRORS = ['connection-closed', 'connection-failed', 'request-timeout', 'fault'];

export interface Progress { id: string; state: string; phase: Phase | 'setup'; bytes: number; pagesSent: number; addressSpace: number }

export class Migration extends EventEmitter {
  readonly sm: MigrationStateMachine;
  readonly metrics: MetricsRecorder;
  readonly done: Promise<MigrationMetrics>;
  private readonly abort = new AbortController();
  private committing = false;
  private phase: Phase | 'setup' = 'setup';
  private sent = new Uint8Array(0);
  private frozen: Captured | null = null;
  /** The frozen state's image, encoded once the first page batch of the down time is on the
   *  link (the destination applies that batch meanwhile) rather than after the last one. */
  private frozenState: Buffer[] | null = null;
  /** --postcopy-after-rounds fired: the freeze ships the state alone, post-copy follows. */
  private switched = false;

  constructor(private readonly spec: MigrationSpec) {
    super();
    this.sm = new MigrationStateMachine(spec.id, spec.log);
    this.sm.on('state', (c) => { this.metrics.m.state = c.to; this.emit('state', c); });
    this.metrics = new MetricsRecorder({
      id: spec.id, pid: spec.process.pid, from: spec.from, to: spec.to, algorithm: spec.strategy.algorithm,
      pageSize: spec.pageSize, linkBytesPerSec: spec.channel.linkBytesPerSec,
    });
    if (spec.strategy.variant) this.metrics.m.variant = spec.strategy.variant;
    if (spec.fileServer) this.metrics.m.fileServer = { node: spec.fileServer.node, bytes: 0, pages: 0, flushMs: null };
    this.done = this.run();
    this.done.catch(() => {});
  }

  get state(): string { return this.sm.state; }

  /** Cancel unless the commit has begun; the process carries on on the source. */
  cancel(): boolean {
    if (this.committing) return false;
    const from = this.sm.state;
    if ((from === 'setup' || from === 'active') && this.sm.cas(from, 'cancelled')) {
      this.abort.abort(new FerryError('cancelled', `migration ${this.spec.id} was cancelled`));
      return true;
    }
    return false;
  }

  progress(): Progress {
    const m = this.metrics.m;
    return { id: m.id, state: m.state, phase: this.phase, bytes: m.bytes.total, pagesSent: m.pages.sent, addressSpace: m.pages.addressSpace };
  }

  private check(): void {
    if (this.abort.signal.aborted) throw this.abort.signal.reason as FerryError;
  }

  private async run(): Promise<MigrationMetrics> {
    const { strategy, channel, process: proc } = this.spec;
    const ctx = this.context();
    try {
      // The address space as it runs, for the progress bar and a migration that never freezes
      // (the freeze counts it again: it may grow meanwhile).
      this.metrics.setAddressSpace(Math.ceil(proc.addressSpaceBytes() / this.spec.pageSize));
      this.metrics.addBytes('setup', await channel.setup());
      this.check();
      await this.spec.fileServer?.open();
      this.check();
      if (!this.sm.cas('setup', 'active')) this.check();
      // Flushing: the file server serves every fault, the source none.
      if ((strategy.faulting && strategy.fileServer !== 'only') || this.spec.options?.postcopyAfterRounds !== undefined) channel.serveFaults((pages) => this.serve(pages));
      // Rounds read the dirty map: the process tracks its writes from here on.
      if (strategy.iterate) await proc.ensureTracked?.();
      this.check();
      await strategy.setup?.(ctx);
      if (strategy.iterate) {
        this.enter('preparation');
        await this.rounds(ctx);
      }
      this.enter('downtime');
      this.frozen = await proc.freeze().catch((e: Error) => {
        throw new FerryError('process-ended', `process ${proc.pid} could not be frozen: ${e.message}`, { cause: e });
      });
      this.metrics.step('frozen');
      this.metrics.setAddressSpace(Math.ceil(this.frozen.logicalBytes / this.spec.pageSize));
      this.check();
      const stale = this.switched ? this.staleForPostCopy(ctx, this.frozen) : undefined;
      if (!stale) await strategy.complete(ctx, this.frozen);
      this.metrics.step('pages');
      this.check();
      const state = this.frozenState ?? proc.stateImage(this.frozen, this.spec.pageSize);
      this.frozenState = null;
      this.metrics.step('state');
      this.check();
      this.committing = true; // from here the destination decides; no cancel
      const committed = await channel.commit(state, stale ? { stale } : undefined);
      this.metrics.addBytes('downtime', committed.bytes);
      this.metrics.ranAgain(committed.ranAgain);
      this.frozen = null;
      await proc.release();
      if (strategy.postProcess || stale) {
        this.sm.cas('active', 'postcopy-active');
        this.enter('postProcessing');
        this.metrics.m.residualDependencies = [this.spec.from];
        // Switched: post-copy's push of every page the destination lacks (stale ones were unmarked sent).
        const left = stale ? await pushRest(ctx) : await strategy.postProcess!(ctx);
        this.metrics.m.residualDependencies = left ?? [];
        if (left?.length) {
          // Freeze-free: the source is done, the file server (or, failing it, the source) still
          // serves the process; the total time waits for that dependency to end (residualEnded).
          this.sm.cas('postcopy-active', 'completed');
          return this.metrics.snapshot();
        }
      } else if (strategy.residual) {
        // No push: the source (flushing: the file server) serves pages for the life of the
        // process. The migration is over for the user; its total time waits for the dependency
        // to end (residualEnded).
        this.enter('postProcessing');
        this.metrics.m.residualDependencies = [this.spec.fileServer?.node ?? this.spec.from];
        this.sm.cas('active', 'completed');
        return this.metrics.snapshot();
      }
      this.metrics.end();
      this.compressionMetrics();
      this.sm.cas(this.sm.state, 'completed');
      return this.metrics.snapshot();
    } catch (e) {
      const err = e instanceof FerryError ? e : new FerryError('migration-failed', (e as Error).message, { cause: e });
      // Resume here unless the destination may run it (an unanswerable commit keeps it frozen).
      // (Before the commit it may be running still, e.g. a failure during rounds: it stays
      // here and must no longer count as moving or be throttled.)
      if ((this.frozen || !this.committing) && err.code !== 'commit-unknown') {
        proc.resume(); this.frozen = null;
        this.spec.fileServer?.drop(`migration ${this.spec.id} failed: ${err.message}`);
      }
      if (!this.abort.signal.aborted) this.abort.abort(err);
      channel.abort(err);
      if (this.sm.state !== 'cancelled') this.sm.cas(this.sm.state, 'failed');
      this.metrics.fail({ code: err.code, message: err.message });
      this.compressionMetrics();
      this.spec.log?.(`migration ${this.spec.id} of ${proc.pid} ${this.sm.state}: ${err.message}`);
      return this.metrics.snapshot();
    } finally {
      strategy.cleanup?.(ctx);
      channel.close();
      this.spec.fileServer?.close();
      this.emit('progress', this.progress());
    }
  }

  /** The destination no longer needs the source (the process ended, has every page, or moved
   *  on): the total time closes now, with the destination's fault statistics. */
  residualEnded(stats?: FaultStats): MigrationMetrics {
    if (stats) Object.assign(this.metrics.m, stats);
    if (this.metrics.m.residualDependencies.length && this.sm.state === 'completed') this.metrics.end();
    this.metrics.m.residualDependencies = [];
    return this.metrics.snapshot();
  }

  /** Pre-copy rounds while the process runs, until a convergence predicate says freeze. */
  private async rounds(ctx: SourceContext): Promise<void> {
    const { strategy, channel, process: proc } = this.spec;
    const o = this.spec.options ?? {};
    let bandwidth = channel.linkBytesPerSec;
    let throttle = 0;
    let previousPending: number | undefined;
    for (let rounds = 0; ; rounds++) {
      const pending = strategy.pending?.(ctx) ?? 0;
      const limitBytes = downtimeBudget({
        downtimeLimitMs: o.downtimeLimitMs ?? DEFAULT_DOWNTIME_LIMIT_MS, bandwidthBytesPerSec: bandwidth,
        addressSpaceBytes: ctx.dirty.addressSpacePages() * ctx.pageSize, thesisLimits: o.thesisLimits ?? false,
      });
      this.metrics.m.rounds = rounds;
      const c = { pending, rounds, maxRounds: o.maxRounds ?? DEFAULT_MAX_ROUNDS, limitBytes, previousPending };
      if (strategy.remaining && switchesToPostCopy({ ...c, postcopyAfterRounds: o.postcopyAfterRounds })) {
        this.switched = true;
        this.metrics.m.switchedToPostCopy = true;
        return;
      }
      const end = roundsEnd(c);
      if (end) { this.metrics.m.roundsEnded = end; return; }
      if (strategy.gaugesWorkingSet) previousPending = pending;
      const t0 = performance.now(), b0 = this.metrics.m.bytes.total;
      await strategy.iterate!(ctx);
      this.check();
      const secs = (performance.now() - t0) / 1000;
      const sent = this.metrics.m.bytes.total - b0;
      if (secs > 0 && sent > 0) bandwidth = sent / secs; // what the link really moved
      // Dirty rate: what the process dirtied while the round ran.
      const dirtied = (strategy.pending?.(ctx) ?? 0);
      this.metrics.m.dirtyRateBytesPerSec = secs > 0 ? dirtied / secs : null;
      if (o.autoConverge && bandwidth) {
        throttle = throttleFor(dirtied / Math.max(secs, 1e-3), bandwidth, throttle);
        proc.throttle?.(throttle);
        this.metrics.m.throttle = throttle;
      }
    }
  }

  private compressionMetrics(): void {
    const c = this.spec.channel.compressionStats?.();
    if (c) this.metrics.m.compression = { ...c, ratio: c.wireBytes > 0 ? c.rawBytes / c.wireBytes : null };
  }

  private enter(phase: Phase): void {
    this.phase = phase;
    this.metrics.begin(phase);
  }

  private context(): SourceContext {
    const self = this;
    const ps = this.spec.pageSize;
    return {
      pageSize: ps,
      memory: this.spec.process.memory,
      metrics: this.metrics,
      signal: this.abort.signal,
      get phase() { return self.phase === 'setup' ? 'preparation' : self.phase; },
      sendPages: (indices, opts) => this.sendPages(indices, opts),
      finish: async () => {
        const { bytes, stats } = await this.spec.channel.finish();
        this.metrics.addBytes('postProcessing', bytes);
        Object.assign(this.metrics.m, stats);
      },
      recover: async (err) => {
        const code = err instanceof FerryError ? err.code : '';
        if (!this.spec.channel.recover || this.abort.signal.aborted || !LINK_ERRORS.includes(code)) throw err;
        this.spec.log?.(`migration ${this.spec.id}: link to ${this.spec.to} broke during post-processing (${(err as Error).message}); reconnecting`);
        const absent = await this.spec.channel.recover();
        for (const i of absent) if (i < this.sent.length) this.sent[i] = 0;
        this.spec.log?.(`migration ${this.spec.id}: reconnected to ${this.spec.to}; ${absent.length} pages still to push`);
        return absent;
      },
      dirty: this.dirtyView(),
      ...(this.spec.fileServer ? { fileServer: this.fileServerView(this.spec.fileServer) } : {}),
    };
  }

  private fileServerView(link: FileServerLink): FileServerView {
    const fm = this.metrics.m.fileServer!;
    const served = () => this.spec.channel.served?.();
    return {
      node: link.node,
      source: this.spec.from,
      flush: async (pages, signal) => {
        await this.flush(link, pages, signal);
        fm.bytes = link.bytesSent;
      },
      seal: async () => {
        await link.seal(this.metrics.m.pages.addressSpace);
        fm.bytes = link.bytesSent;
        fm.flushMs = this.metrics.sinceFreeze();
      },
      handOver: async () => {
        if (!this.spec.channel.handOver) throw new FerryError('unsupported', `migration ${this.spec.id}: the channel cannot hand the process's faults over`);
        return this.spec.channel.handOver(link.node);
      },
      // The hold is made once setup is done (serveFaults): looked up when asked.
      get sourceReleased() { return served() ?? new Promise<string>(() => {}); },
      drop: (reason) => link.drop(reason),
    };
  }

  /** Non-zero pages to the file server, a few batches in flight. */
  private async flush(link: FileServerLink, indices: Iterable<number>, signal?: AbortSignal): Promise<void> {
    const ps = this.spec.pageSize;
    const mem = this.spec.process.memory;
    const perBatch = Math.max(1, Math.floor(link.batchBytes / ps));
    const fm = this.metrics.m.fileServer!;
    const inflight: Promise<void>[] = [];
    let pages: number[] = [];
    const go = async () => {
      if (!pages.length) return;
      const body = encodePageBatch(mem, ps, pages);
      fm.pages += pages.length;
      pages = [];
      const p = link.store(body);
      p.catch(() => {}); // awaited below; a later await may throw first
      inflight.push(p);
      if (inflight.length >= FLUSH_WINDOW) await inflight.shift();
      fm.bytes = link.bytesSent;
    };
    for (const i of indices) {
      if (signal?.aborted) break;
      this.check();
      if (isZeroPage(mem, i, ps)) continue; // the store reads as zero where nothing was stored
      pages.push(i);
      if (pages.length >= perBatch) await go();
    }
    await go();
    for (const p of inflight) await p;
  }

  private dirtyView(): SourceContext['dirty'] {
    const d = new DirtyPages(this.spec.process.memory, this.spec.pageSize);
    const ps = this.spec.pageSize;
    return {
      addressSpacePages: () => Math.ceil(this.spec.process.addressSpaceBytes() / ps),
      tracked: () => this.spec.process.tracksWrites?.() ?? true,
      clear: (n) => d.clear(n),
      count: (n) => d.count(n),
      take: (n) => d.take(n),
      marked: (p) => d.marked(p),
    };
  }

  /** Switching to post-copy, frozen: the pages the destination lacks or holds an old copy of,
   *  as a bitmap for the commit. They count as unsent from now on, so the push sends them
   *  (unless a fault fetches one first). */
  private staleForPostCopy(ctx: SourceContext, frozen: Captured): Uint8Array {
    const all = Math.ceil(frozen.logicalBytes / this.spec.pageSize);
    const map = new Uint8Array(Math.ceil(all / 8));
    for (const p of this.spec.strategy.remaining!(ctx, frozen)) {
      if (p >= all) continue;
      map[p >> 3]! |= 1 << (p & 7);
      if (p < this.sent.length) this.sent[p] = 0;
    }
    return map;
  }

  /** A page fault of the destination: these pages' bytes, now (the source is frozen). */
  private serve(pages: number[]): readonly Uint8Array[] | PageAnswer {
    const plan = this.spec.strategy.planFault?.(pages);
    if (plan) return { parts: this.servePages(plan.send), notModified: plan.notModified, inFlight: plan.inFlight };
    return this.servePages(pages);
  }

  private servePages(pages: number[]): readonly Uint8Array[] {
    const ps = this.spec.pageSize;
    const mem = this.spec.process.memory;
    const data: number[] = [], zero: number[] = [];
    for (const i of pages) {
      if (i >= this.sent.length) { const s = new Uint8Array(Math.max(i + 1, this.sent.length * 2)); s.set(this.sent); this.sent = s; }
      if (isZeroPage(mem, i, ps)) zero.push(i); else { data.push(i); this.metrics.pageSent(i); }
      this.sent[i] = 1;
    }
    const parts = encodePageBatchParts(mem, ps, data, zero);
    this.metrics.addBytes('postProcessing', parts.reduce((n, p) => n + p.length, 0)); // served on the page server's connections
    return parts;
  }

  /** Batch pages into frames; elide zero pages the destination never had. */
  private async sendPages(indices: Iterable<number>, opts: SendOptions = {}): Promise<void> {
    const ps = this.spec.pageSize;
    const mem = this.spec.process.memory;
    const perBatch = Math.max(1, Math.floor(this.spec.channel.batchBytes / ps));
    const phase = this.phase === 'setup' ? 'preparation' : this.phase;
    let pages: number[] = [], zero: number[] = [];
    let lastProgress = 0;
    const flush = async () => {
      if (!pages.length && !zero.length) return;
      // Frozen (down time): the pages go from guest memory to the link without a copy.
      const body = phase !== 'preparation' ? encodePageBatchParts(mem, ps, pages, zero) : encodePageBatch(mem, ps, pages, zero);
      for (const i of pages) this.metrics.pageSent(i);
      pages = []; zero = [];
      this.metrics.addBytes(phase, await this.spec.channel.sendPages(body));
      this.check();
      if (phase === 'downtime' && this.frozen && !this.frozenState && !this.committing) this.frozenState = this.spec.process.stateImage(this.frozen, ps);
      const t = performance.now();
      if (t - lastProgress > 100) { lastProgress = t; this.emit('progress', this.progress()); }
    };
    for (const i of indices) {
      if (i >= this.sent.length) { const s = new Uint8Array(Math.max(i + 1, this.sent.length * 2)); s.set(this.sent); this.sent = s; }
      if (opts.skipSent && this.sent[i]) continue;
      if (isZeroPage(mem, i, ps)) {
        if (!this.sent[i]) this.metrics.zeroPage();
        if (!this.sent[i] && !opts.zeroMarkers) continue;
        zero.push(i);
      } else pages.push(i);
      this.sent[i] = 1;
      if (pages.length + zero.length >= perBatch) await flush();
    }
    await flush();
  }
}
