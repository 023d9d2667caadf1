// The node's migration service: it starts migrations of its processes (the
// source side: a Migration from src/migration over a dedicated connection to
// the destination) and takes in migrations from other nodes (the destination
// side: IncomingMigration). It keeps the record of past migrations for
// `ferry migrations`.
//
// The wire, on one connection per migration (codes.ts, MIG_*):
//   S -> D  MIG_SETUP {mid, pid, sha256, pageSize, algorithm, memoryBytes}  D: {ready} or {needModule}
//           (memoryBytes: the source's memory in use; the destination pre-faults as much)
//           (module bytes as a stream {kind: 'module', mid}, then MIG_SETUP again)
//   S -> D  MIG_PAGES {mid} + page batch ...                       (one-way, bulk)
//   S -> D  MIG_COMMIT {mid} + state image                         D: {state: 'running'} or ERROR migration-aborted
//   S -> D  MIG_QUERY {mid} (fresh connection, if the commit's answer was lost)
// Post-copy, after the commit, on the same connection:
//   D -> S  PAGE_REQUEST {mid, pages} (urgent)                      S: PAGE_DATA + page batch
//   S -> D  MIG_PAGES ... (the background push), then MIG_DONE {mid} D: {remoteFaults, ...} once every page is here
// Compression (--compress): MIG_SETUP {compress: codec} is answered {ready, compress: codec} by a
// destination that has it (one that has not refuses; one that does not echo it is refused by the
// source); a compressed MIG_PAGES says {z: codec, raw: bytes before compression}.
// Assisted post-copy: the MIG_PAGES before the commit fill the destination's temporary page
// store; PAGE_DATA's header may list pages {notModified} (the stored copy is current: no
// bytes) and {inFlight} (already pushed: wait for them); the batch carries the others.
import { randomUUID } from 'node:crypto';
import { FerryError } from '../errors.ts';
import { IncomingMigration, type FaultStats } from '../migration/destination.ts';
import { decodePageBatch } from '../memory/page-batch.ts';
import { BatchCompressor, decompressBatch, isCodec, loadCodec, CODECS, type Codec } from '../memory/page-codec.ts';
import { Migration, type MigrationChannel, type MigrationOptions, type PageAnswer } from '../migration/engine.ts';
import type { MigrationMetrics } from '../migration/metrics.ts';
import { strategyFor } from '../migration/index.ts';
import type { Connection, IncomingStream, Message, Reply } from '../transport/index.ts';
import { sha256 } from '../vm/module-meta.ts';
import { warmWorkers } from '../vm/process.ts';
import type { HomeRouter } from './home.ts';
import type { HomeFiles } from './home-files.ts';
import type { Membership } from './membership.ts';
import type { ProcessExtra, ProcessTable } from './process-table.ts';
import type { ProgramStore } from './programs.ts';
import { str } from './fields.ts';
import type { Progress } from '../migration/engine.ts';
import type { Faults } from './faults.ts';

export const DEFAULT_PAGE_SIZE = 4096;
const SETUP_TIMEOUT_MS = 15 * 60_000; // compiling a large module on the destination takes minutes
const COMMIT_TIMEOUT_MS = 30_000;
const QUERY_ATTEMPTS = 30;
const FAULT_TIMEOUT_MS = 30_000;
/** Largest page index a batch may name (4 GiB of 4 KiB pages). */
const MAX_PAGES = 1 << 20;
const HISTORY = 256;
/** Page batches per frame on an unshaped link (a shaped one uses its chunk size). */
const BATCH_BYTES = 1024 * 1024;

export interface MigratorContext {
  name: string;
  membership: Membership;
  table: ProcessTable;
  home: HomeRouter;
  homeFiles: HomeFiles;
  programs: ProgramStore;
  /** A new connection to a node (not shared with membership), handlers installed. */
  dialNode(name: string): Promise<Connection>;
  faults: Faults;
  log?: (m: string) => void;
}

export interface MigrateRequest { pid: string; to: string; algorithm?: string; pageSize?: number; options?: MigrationOptions }

export class Migrator {
  private readonly active = new Map<string, Migration>(); // pid -> its migration
  private readonly history: MigrationMetrics[] = [];
  private readonly incoming = new Map<string, IncomingMigration>();
  private readonly modules = new Map<string, Promise<Buffer>>(); // mid -> module bytes arriving as a stream
  private readonly codecs = new Map<string, Codec>(); // mid -> the compression agreed at setup

  constructor(private readonly ctx: MigratorContext) {}

  // ---- source side ----

  /** Move a process of this node; resolves with the final metrics (failed ones too). */
  async migrate(req: MigrateRequest, onProgress?: (p: Progress) => void): Promise<MigrationMetrics> {
    const { table, membership } = this.ctx;
    if (req.to === this.ctx.name) throw new FerryError('bad-argument', `process ${req.pid} already runs on ${req.to}`);
    if (!membership.has(req.to)) throw new FerryError('no-such-node', `no node named ${req.to} in the cluster`);
    const strategy = strategyFor(req.algorithm ?? 'total-copy');
    const pageSize = req.pageSize ?? DEFAULT_PAGE_SIZE;
    const inUse = table.get(req.pid)?.memoryBytes ?? 0; // read before it is marked moving (the snapshot then skips it)
    const source = table.sourceProcess(req.pid, req.to);
    const { sha256: hash } = table.get(req.pid)!; // now: it may end while we dial
    const bytes = table.programBytes(req.pid);
    const id = randomUUID().slice(0, 8);
    let conn: Connection;
    try { conn = await this.ctx.dialNode(req.to); } catch (e) { source.resume(); throw e; }
    const channel = new ConnectionChannel(conn, id, this.ctx.faults, {
      pid: req.pid, sha256: hash, pageSize, algorithm: strategy.algorithm, memoryBytes: inUse, compress: req.options?.compress ?? 'none',
      program: () => bytes,
      dialAgain: () => this.ctx.dialNode(req.to),
    });
    const m = new Migration({ id, from: this.ctx.name, to: req.to, strategy, process: source, channel, pageSize, options: req.options, log: this.ctx.log });
    this.active.set(req.pid, m);
    if (onProgress) m.on('progress', onProgress);
    const metrics = await m.done;
    this.active.delete(req.pid);
    this.history.push(metrics);
    if (this.history.length > HISTORY) this.history.shift();
    return metrics;
  }

  /** Cancel the migration of a process of this node. */
  cancel(pid: string): { id: string } {
    const m = this.active.get(pid);
    if (!m) throw new FerryError('no-migration', `process ${pid} is not migrating from ${this.ctx.name}`);
    if (!m.cancel()) throw new FerryError('too-late', `migration ${m.metrics.m.id} of ${pid} is ${m.state} and committing: it can no longer be cancelled`);
    return { id: m.metrics.m.id };
  }

  isMigrating(pid: string): boolean { return this.active.has(pid); }

  /** Past migrations from this node, and the ones under way. */
  list(): MigrationMetrics[] {
    return [...this.history, ...[...this.active.values()].map((m) => m.metrics.snapshot())];
  }

  // ---- destination side: handlers for every connection ----

  install(conn: Connection): void {
    conn.handle('MIG_SETUP', this.onSetup);
    conn.on('MIG_PAGES', this.onPages);
    conn.sinkBodies('MIG_PAGES', (h, n) => (h.z === undefined ? this.incoming.get(String(h.mid))?.pageSink(n) : undefined)); // applied as they arrive (compressed ones: whole)
    conn.handle('MIG_COMMIT', this.onCommit);
    conn.handle('MIG_QUERY', this.onQuery);
    conn.handle('MIG_DONE', this.onDone);
    conn.on('MIG_ABORT', (m) => { this.incoming.get(String(m.header.mid))?.abort(`source aborted: ${String(m.header.reason ?? '')}`); });
  }

  /** A stream whose meta.kind is 'module' (daemon.ts routes streams by kind). */
  onModuleStream(s: IncomingStream): void {
    const mid = String(s.meta.mid);
    this.modules.set(mid, s.collect());
    this.modules.get(mid)!.catch(() => {});
  }

  private onSetup = async (msg: Message, conn: Connection): Promise<Reply> => {
    const h = msg.header;
    const mid = str(h, 'mid', 'MIG_SETUP'), pid = str(h, 'pid', 'MIG_SETUP'), hash = str(h, 'sha256', 'MIG_SETUP');
    if (this.ctx.faults.hit('dest-setup', conn)) throw new FerryError('fault', 'dest-setup');
    const pageSize = h.pageSize;
    if (pageSize !== 4096 && pageSize !== 16384 && pageSize !== 65536) throw new FerryError('bad-request', `MIG_SETUP: page size ${String(pageSize)} (4096, 16384 or 65536)`);
    if (this.ctx.table.get(pid)) throw new FerryError('duplicate-process', `process ${pid} already runs on ${this.ctx.name}`);
    const compress = h.compress ?? 'none';
    if (!isCodec(compress)) throw new FerryError('unsupported', `MIG_SETUP: compression '${String(compress)}' is not known on ${this.ctx.name} (known: ${CODECS.join(', ')})`);
    loadCodec(compress);
    let bytes = this.ctx.programs.get(hash);
    if (!bytes && h.moduleStream === true) {
      const p = this.modules.get(mid);
      if (!p) throw new FerryError('bad-request', `MIG_SETUP: no module stream for migration ${mid}`);
      this.modules.delete(mid);
      bytes = await p;
      if (sha256(bytes) !== hash) throw new FerryError('bad-request', 'MIG_SETUP: the module bytes do not match their sha256');
      this.ctx.programs.put(hash, bytes);
    }
    if (!bytes) return { header: { needModule: true } };
    let inc = this.incoming.get(mid);
    if (!inc) {
      const algorithm = typeof h.algorithm === 'string' ? h.algorithm : 'total-copy';
      let faulting: boolean, temporaryStore: boolean;
      try { const s = strategyFor(algorithm); faulting = s.faulting === true; temporaryStore = s.temporaryStore === true; } catch (e) { throw new FerryError('bad-request', (e as Error).message); }
      inc = new IncomingMigration({ id: mid, pid, from: conn.peer.node, sha256: hash, pageSize, faulting, temporaryStore }, this.ctx.log);
      this.incoming.set(mid, inc);
      conn.onClose(() => { inc!.abort(`the connection from ${conn.peer.node} closed`); inc!.sourceLost(`the connection closed`); });
      this.forgetLater(mid);
    }
    await inc.setup(bytes, typeof h.memoryBytes === 'number' ? h.memoryBytes : 0);
    this.codecs.set(mid, compress);
    return { header: { ready: true, ...(compress !== 'none' ? { compress } : {}) } };
  };

  private onPages = (msg: Message, conn: Connection): void => {
    const inc = this.incoming.get(String(msg.header.mid));
    if (!inc) return;
    if (this.ctx.faults.hit('dest-pages', conn)) return;
    let body: Uint8Array = msg.body;
    if (msg.header.z !== undefined) {
      try {
        const codec = this.codecs.get(inc.spec.id);
        if (msg.header.z !== codec) throw new FerryError('bad-frame', `page batch compressed with ${String(msg.header.z)}, but ${codec ?? 'none'} was agreed`);
        body = decompressBatch(codec as Codec, msg.body, Number(msg.header.raw));
      } catch (e) {
        const why = `from ${conn.peer.node}: ${(e as Error).message}`;
        this.ctx.log?.(`migration ${inc.spec.id} of ${inc.spec.pid}: page batch refused ${why}`);
        if (inc.state !== 'running') inc.abort(`page batch refused ${why}`);
        return;
      }
    }
    if (inc.state === 'running' && inc.spec.faulting) {
      // The background push: pages still absent are taken.
      try { inc.postPages(decodePageBatch(body, inc.spec.pageSize, MAX_PAGES)); } catch (e) { this.ctx.log?.(`push of ${inc.spec.pid} refused: ${(e as Error).message}`); }
      return;
    }
    try { inc.pages(body, msg.sunk); } catch (e) { inc.abort((e as Error).message); }
  };

  /** The state, and the order to run it: the destination decides here (see destination.ts). */
  private onCommit = async (msg: Message, conn: Connection): Promise<Reply> => {
    const inc = this.need(msg);
    if (this.ctx.faults.hit('dest-state', conn)) throw new FerryError('fault', 'dest-state');
    try { inc.acceptState(msg.body); } catch (e) { inc.abort((e as Error).message); throw e; }
    if (this.ctx.faults.hit('dest-commit', conn)) throw new FerryError('fault', 'dest-commit');
    await inc.commit(async (m) => {
      const img = m.image!;
      const x = img.meta.extra as unknown as ProcessExtra;
      const program = { path: img.meta.program, bytes: this.ctx.programs.get(m.spec.sha256)!, hash: m.spec.sha256 };
      const fileOps = x.files === 'home' && x.home !== this.ctx.name ? this.ctx.homeFiles.remote(img.meta.pid, x.home) : undefined;
      let onFault: ((addr: number, len: number) => Promise<void>) | undefined;
      if (m.spec.faulting) {
        m.markAbsent(img.memory.logicalBytes); // before it runs: every page not here faults
        const from = m.spec.from;
        onFault = (addr, len) => m.fault(addr, len, async (pages) => {
          try {
            const r = await conn.request('PAGE_REQUEST', { mid: m.spec.id, pages }, undefined, { priority: 'urgent', timeoutMs: FAULT_TIMEOUT_MS });
            return { ...decodePageBatch(r.body, m.spec.pageSize, MAX_PAGES), notModified: pageList(r.header.notModified, pages), inFlight: pageList(r.header.inFlight, pages) };
          } catch (e) {
            throw new FerryError('pages-lost', `process ${m.spec.pid} needs page ${pages[0]}, held by node ${from}, which cannot serve it: ${(e as Error).message}`, { cause: e });
          }
        });
      }
      await this.ctx.table.adopt({
        image: img, program, loaded: m.spec.faulting ? m.faultingModule! : m.loaded!, memory: m.memory!,
        sink: this.ctx.home.routeFor(img.meta.pid, x.home), fileOps, onFault, residual: m.spec.faulting ? [m.spec.from] : [],
      });
      const offset = img.wasi.stdinTakenBytes ?? 0;
      if (x.home === this.ctx.name) this.ctx.home.attach(img.meta.pid, this.ctx.name, offset);
      else {
        // Not awaited: the process runs; home learns where (stdin follows) a moment later.
        void this.ctx.membership.peer(x.home).then((c) => c.send('HOME_ATTACH', { pid: img.meta.pid, node: this.ctx.name, stdinOffset: offset }))
          .catch((e: Error) => this.ctx.log?.(`could not tell home ${x.home} that ${img.meta.pid} runs here: ${e.message}`));
      }
    });
    void warmWorkers.prewarm(); // the next arrival (or hop) finds a loaded worker
    if (this.ctx.faults.hit('dest-running', conn)) throw new FerryError('fault', 'dest-running');
    return { header: { state: 'running' } };
  };

  /** Post-copy: the source has pushed everything; every page must be here. */
  private onDone = async (msg: Message): Promise<Reply> => {
    const inc = this.need(msg);
    if (inc.state !== 'running' || !inc.spec.faulting) throw new FerryError('bad-request', `MIG_DONE: migration ${inc.spec.id} is ${inc.state}, not in post-copy`);
    inc.finish();
    await this.ctx.table.rehost(inc.spec.pid, inc.loaded!);
    return { header: { ...inc.faultStats() } };
  };

  private onQuery = (msg: Message): Reply => {
    const inc = this.incoming.get(str(msg.header, 'mid', 'MIG_QUERY'));
    if (!inc) return { header: { state: 'unknown' } };
    inc.abort('the source asked for the outcome before any commit arrived');
    return { header: { state: inc.state } };
  };

  private need(msg: Message): IncomingMigration {
    const mid = str(msg.header, 'mid', msg.name);
    const inc = this.incoming.get(mid);
    if (!inc) throw new FerryError('migration-aborted', `no migration ${mid} on ${this.ctx.name}`);
    return inc;
  }

  /** Outcomes are kept a while for queries, then dropped. */
  private forgetLater(mid: string): void {
    setTimeout(() => { this.incoming.delete(mid); this.codecs.delete(mid); }, 10 * 60_000).unref();
  }
}

/** A page list in a PAGE_DATA header: only pages the fault asked for (anything else is refused). */
function pageList(v: unknown, asked: number[]): number[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((p) => asked.includes(p as number)))
    throw new FerryError('bad-frame', `PAGE_DATA names pages that were not asked for: ${JSON.stringify(v).slice(0, 80)}`);
  return v as number[];
}

interface ChannelSpec {
  pid: string;
  sha256: string;
  pageSize: number;
  algorithm: string;
  /** The process's memory in use when the migration starts (the destination pre-faults as much). */
  memoryBytes: number;
  compress: Codec;
  program: () => Uint8Array;
  dialAgain: () => Promise<Connection>;
}

/** MigrationChannel over a Connection (the transport side of the engine). */
class ConnectionChannel implements MigrationChannel {
  readonly linkBytesPerSec: number | null;
  readonly batchBytes: number;
  private sent0: number;
  private batches = 0;
  private readonly packed: { codec: string; rawBytes: number; wireBytes: number };
  private readonly compressor: BatchCompressor;

  constructor(private readonly conn: Connection, private readonly mid: string, private readonly faults: Faults, private readonly spec: ChannelSpec) {
    const rate = conn.shaper?.rate;
    this.linkBytesPerSec = rate !== undefined && Number.isFinite(rate) ? rate : null;
    this.batchBytes = this.linkBytesPerSec === null ? BATCH_BYTES : conn.chunkSize;
    this.sent0 = conn.stats.bytesSent;
    this.packed = { codec: spec.compress, rawBytes: 0, wireBytes: 0 };
    this.compressor = new BatchCompressor(spec.compress);
  }

  /** Wire bytes since the last call. */
  private delta(): number { const now = this.conn.stats.bytesSent; const d = now - this.sent0; this.sent0 = now; return d; }

  async setup(): Promise<number> {
    const codec = this.spec.compress;
    loadCodec(codec); // refuse here, before the destination does any work, if this node lacks it
    const head = {
      mid: this.mid, pid: this.spec.pid, sha256: this.spec.sha256, pageSize: this.spec.pageSize, algorithm: this.spec.algorithm, memoryBytes: this.spec.memoryBytes,
      ...(codec !== 'none' ? { compress: codec } : {}),
    };
    let r = await this.conn.request('MIG_SETUP', head, undefined, { timeoutMs: SETUP_TIMEOUT_MS });
    if (r.header.needModule === true) {
      await this.conn.sendStream(this.spec.program(), { kind: 'module', mid: this.mid });
      r = await this.conn.request('MIG_SETUP', { ...head, moduleStream: true }, undefined, { timeoutMs: SETUP_TIMEOUT_MS });
    }
    if (r.header.ready !== true) throw new FerryError('migration-failed', `destination did not get ready: ${JSON.stringify(r.header)}`);
    if (codec !== 'none' && r.header.compress !== codec) throw new FerryError('unsupported', `destination does not take ${codec}-compressed pages (an older node?): migrate without --compress`);
    return this.delta();
  }

  async sendPages(batch: Buffer | readonly Uint8Array[]): Promise<number> {
    const codec = this.spec.compress;
    const rawLength = Buffer.isBuffer(batch) ? batch.length : (batch as readonly Uint8Array[]).reduce((n, p) => n + p.length, 0);
    const raw = codec !== 'none' || this.batches === 0 ? (Buffer.isBuffer(batch) ? batch : Buffer.concat(batch as Uint8Array[])) : null;
    // Compressing this batch overlaps the previous one's time on the wire.
    const z = await this.compressor.compress(raw!); // null: not compressed (it would not shrink), sent as it is
    this.packed.rawBytes += rawLength;
    this.packed.wireBytes += z ? z.length : rawLength;
    const head = z ? { mid: this.mid, z: codec, raw: rawLength } : { mid: this.mid };
    await this.onWire; // in order, one batch handed to the link at a time; a failed send fails here
    const sending = this.conn.send('MIG_PAGES', head, this.batches === 0 ? this.faults.corrupt('src-batch', z ?? raw!) : (z ?? raw ?? batch));
    // Compressed bodies are copies: the engine may go on (and change the memory) while they go.
    if (codec !== 'none') { this.onWire = sending; sending.catch(() => {}); } else await sending;
    if (this.batches++ === 0) this.faults.hit('src-pages', this.conn);
    return this.delta();
  }

  /** The last page batch is on the link (before the commit or MIG_DONE). */
  private onWire: Promise<void> = Promise.resolve();

  async commit(state: Buffer[]): Promise<number> {
    await this.onWire;
    try {
      const answer = this.conn.request('MIG_COMMIT', { mid: this.mid }, Buffer.concat(state), { timeoutMs: COMMIT_TIMEOUT_MS });
      this.faults.hit('src-commit', this.conn);
      await answer;
      return this.delta();
    } catch (e) {
      if (e instanceof FerryError && e.code === 'migration-aborted') throw e;
      // The answer was lost: ask on a fresh connection until the destination says, or is gone.
      let last = e as Error;
      for (let i = 0; i < QUERY_ATTEMPTS; i++) {
        let c: Connection | undefined;
        try {
          c = await this.spec.dialAgain();
          const r = await c.request('MIG_QUERY', { mid: this.mid }, undefined, { timeoutMs: 5000 });
          if (r.header.state === 'running') return this.delta();
          throw new FerryError('migration-aborted', `destination reports the migration ${String(r.header.state)} (commit lost: ${last.message})`);
        } catch (qe) {
          if (qe instanceof FerryError && qe.code === 'migration-aborted') throw qe;
          if (qe instanceof FerryError && qe.code === 'connect-failed' && /ECONNREFUSED/.test(String((qe.cause as Error)?.message ?? qe.message)))
            throw new FerryError('migration-aborted', `destination is gone (${qe.message}); the process stays here`);
          last = qe as Error;
        } finally { c?.destroy(); }
        await new Promise((r) => setTimeout(r, 1000));
      }
      throw new FerryError('commit-unknown', `cannot learn whether the destination runs the process (${last.message}): it stays frozen here`);
    }
  }

  serveFaults(read: (pages: number[]) => Buffer | readonly Uint8Array[] | PageAnswer): void {
    this.conn.handle('PAGE_REQUEST', (msg) => {
      const pages = msg.header.pages;
      if (!Array.isArray(pages) || pages.length === 0 || pages.length > 256 || !pages.every((p) => Number.isInteger(p) && p >= 0 && p < MAX_PAGES))
        throw new FerryError('bad-request', 'PAGE_REQUEST: pages must be 1 to 256 page numbers');
      const body = read(pages as number[]);
      if ('parts' in body) // assisted post-copy: some pages answered without their bytes
        return { code: 'PAGE_DATA', header: { mid: this.mid, notModified: body.notModified, inFlight: body.inFlight }, body: Buffer.concat(body.parts as Uint8Array[]), priority: 'urgent' };
      return { code: 'PAGE_DATA', header: { mid: this.mid }, body: Buffer.isBuffer(body) ? body : Buffer.concat(body as Uint8Array[]), priority: 'urgent' };
    });
  }

  async finish(): Promise<{ bytes: number; stats: FaultStats }> {
    await this.onWire;
    const r = await this.conn.request('MIG_DONE', { mid: this.mid }, undefined, { timeoutMs: SETUP_TIMEOUT_MS });
    const h = r.header;
    const stats: FaultStats = {
      remoteFaults: typeof h.remoteFaults === 'number' ? h.remoteFaults : 0,
      faultRoundTripMs: typeof h.faultRoundTripMs === 'number' ? h.faultRoundTripMs : null,
      executionDelayMs: typeof h.executionDelayMs === 'number' ? h.executionDelayMs : 0,
      ...(typeof h.notModifiedAnswers === 'number' ? { notModifiedAnswers: h.notModifiedAnswers } : {}),
    };
    return { bytes: this.delta(), stats };
  }

  compressionStats(): { codec: string; rawBytes: number; wireBytes: number } { return { ...this.packed }; }

  abort(reason: FerryError): void {
    if (this.conn.isOpen) this.conn.send('MIG_ABORT', { mid: this.mid, reason: reason.message }).catch(() => {});
  }

  close(): void {
    void this.conn.close().catch(() => {});
  }
}
