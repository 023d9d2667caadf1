// The node's migration service: it starts migrations of its processes (the
// source side: a Migration from src/migration over a dedicated connection to
// the destination) and takes in migrations from other nodes (the destination
// side: IncomingMigration). It keeps the record of past migrations for
// `ferry migrations`.
//
// The wire, on one connection per migration (codes.ts, MIG_*), which the destination
// dials on the source's request (dial-back.ts: it then reads the page stream into one
// reused buffer), or the source dials when it cannot:
//   S -> D  MIG_SETUP {mid, pid, sha256, pageSize, algorithm, memoryBytes}  D: {ready} or {needModule}
//           (memoryBytes: the source's memory in use; the destination pre-faults as much)
//           (module bytes as a stream {kind: 'module', mid}, then MIG_SETUP again)
//   S -> D  MIG_PAGES {mid} + page batch ...                       (one-way, bulk)
//   S -> D  MIG_COMMIT {mid} + state image                         D: {state: 'running', ranForMs} or ERROR migration-aborted
//           (ranForMs: how long the process had run when D answered, D's clock: the down time's end)
//           (a pre-copy switched to post-copy: {mid, postcopy: true, staleBytes: n} + n bytes of
//           bitmap of the pages the destination holds old copies of + state image; MIG_SETUP said
//           postcopy: true, so the destination loaded the faulting variant too)
//   S -> D  MIG_QUERY {mid} (fresh connection, if the commit's answer was lost)
// Post-copy and demand paging, after the commit: page faults go to the source's
// page server on any connection (page-server.ts, remote-pages.ts):
//   D -> S  PAGE_REQUEST {mid, pid, pages} (urgent)                 S: PAGE_DATA + page batch
//   D -> S  RESIDUAL_END {mid, pid, reason, stats}                  (demand paging: the dependency is over)
// Post-copy's push, on the migration's connection:
//   S -> D  MIG_PAGES ... (the background push), then MIG_DONE {mid} D: {remoteFaults, ...} once every page is here
//   S -> D  MIG_RESUME {mid} (a fresh connection after the link broke) D: bitmap of the pages still absent
// Compression (--compress): MIG_SETUP {compress: codec} is answered {ready, compress: codec} by a
// destination that has it (one that has not refuses; one that does not echo it is refused by the
// source); a compressed MIG_PAGES says {z: codec, raw: bytes before compression}.
// Assisted post-copy: the MIG_PAGES before the commit fill the destination's temporary page
// store; PAGE_DATA's header may list pages {notModified} (the stored copy is current: no
// bytes) and {inFlight} (already pushed: wait for them); the batch carries the others.
// Flushing and freeze-free (file-server.ts): the source flushes the pages to a file server F
// (PAGE_STORE); flushing's MIG_SETUP names it ({holder: F}: D faults to F from the start);
// freeze-free's faults go to the source until it has flushed everything, then:
//   S -> D  MIG_HANDOVER {mid, holder: F}                           D: {handedOver} (faults go to F from now on)
import { randomUUID } from 'node:crypto';
import { FerryError } from '../errors.ts';
import { IncomingMigration, type FaultStats } from '../migration/destination.ts';
import { decodePageBatch } from '../memory/page-batch.ts';
import { BatchCompressor, decompressBatch, isCodec, loadCodec, CODECS, type Codec } from '../memory/page-codec.ts';
import { Migration, type MigrationChannel, type MigrationOptions, type PageAnswer } from '../migration/engine.ts';
import type { DowntimeEnd, MigrationMetrics } from '../migration/metrics.ts';
import { strategyFor } from '../migration/index.ts';
import type { Connection, IncomingStream, Message, Reply } from '../transport/index.ts';
import { sha256 } from '../vm/module-meta.ts';
import { downtimeEnd, ranAgainAnswer } from './downtime-end.ts';
import type { HomeRouter } from './home.ts';
import type { HomeFiles } from './home-files.ts';
import type { Membership } from './membership.ts';
import type { ProcessExtra, ProcessTable } from './process-table.ts';
import type { ProgramStore } from './programs.ts';
import { str } from './fields.ts';
import type { Progress } from '../migration/engine.ts';
import type { Faults } from './faults.ts';
import { PageServer, type Hold, type HoldEnd } from './page-server.ts';
import { RECOVERY_MS, RemotePages } from './remote-pages.ts';
import { FILE_SERVER_ROLE, FileServer } from './file-server.ts';

export const DEFAULT_PAGE_SIZE = 4096;
const SETUP_TIMEOUT_MS = 15 * 60_000; // compiling a large module on the destination takes minutes
const COMMIT_TIMEOUT_MS = 30_000;
const QUERY_ATTEMPTS = 30;
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
  /** A new connection that the node dials to this one (dial-back.ts), handlers installed. */
  dialledBy(name: string): Promise<Connection>;
  faults: Faults;
  /** This node's roles (file-server: it keeps page stores for flushing and freeze-free). */
  roles?: string[];
  log?: (m: string) => void;
}

export interface MigrateRequest {
  pid: string; to: string; algorithm?: string; variant?: string; pageSize?: number; options?: MigrationOptions;
  /** Flushing, freeze-free: the file server (default: any up node with the role). */
  fileServer?: string;
}

export class Migrator {
  private readonly active = new Map<string, Migration>(); // pid -> its migration
  private readonly history: MigrationMetrics[] = [];
  private readonly incoming = new Map<string, IncomingMigration>();
  private readonly modules = new Map<string, Promise<Buffer>>(); // mid -> module bytes arriving as a stream
  /** Completed migrations whose process still depends on this node (demand paging), by mid. */
  private readonly residual = new Map<string, Migration>();
  /** This node's pages of processes running elsewhere. */
  readonly pageServer: PageServer;
  /** Pages of processes running here that another node holds. */
  readonly remotePages: RemotePages;
  private readonly codecs = new Map<string, Codec>(); // mid -> the compression agreed at setup
  /** Page stores kept here (file-server role), and this node's links to file servers. */
  readonly fileServer: FileServer;

  constructor(private readonly ctx: MigratorContext) {
    this.pageServer = new PageServer({ name: ctx.name, membership: ctx.membership, log: ctx.log });
    this.remotePages = new RemotePages({
      name: ctx.name, membership: ctx.membership, dialNode: ctx.dialNode, faults: ctx.faults, log: ctx.log,
      rehost: (pid, loaded) => ctx.table.rehost(pid, loaded),
    });
    ctx.table.onEnded((pid, how) => this.remotePages.processEnded(pid, how));
    this.fileServer = new FileServer({
      name: ctx.name, enabled: ctx.roles?.includes(FILE_SERVER_ROLE) ?? false, membership: ctx.membership,
      pageServer: this.pageServer, dialNode: ctx.dialNode, log: ctx.log,
    });
  }

  // ---- source side ----

  /** Move a process of this node; resolves with the final metrics (failed ones too). */
  async migrate(req: MigrateRequest, onProgress?: (p: Progress) => void): Promise<MigrationMetrics> {
    const { table, membership } = this.ctx;
    if (req.to === this.ctx.name) throw new FerryError('bad-argument', `process ${req.pid} already runs on ${req.to}`);
    if (!membership.has(req.to)) throw new FerryError('no-such-node', `no node named ${req.to} in the cluster`);
    const strategy = strategyFor(req.algorithm ?? 'total-copy', req.variant);
    const switches = req.options?.postcopyAfterRounds !== undefined;
    if (switches && !(strategy.iterate && strategy.remaining))
      throw new FerryError('bad-argument', `--postcopy-after-rounds applies to pre-copy algorithms, not ${strategy.algorithm}`);
    const pageSize = req.pageSize ?? DEFAULT_PAGE_SIZE;
    if (req.fileServer !== undefined && !strategy.fileServer) throw new FerryError('bad-argument', `--file-server applies to flushing and freeze-free, not ${strategy.algorithm}`);
    const fileServer = strategy.fileServer ? this.fileServer.pick(this.ctx.name, req.to, strategy.algorithm, req.fileServer) : undefined;
    // It depends on another node's pages: it pulls them first (it never depends on two nodes).
    if (table.get(req.pid)) await this.remotePages.settle(req.pid);
    const inUse = table.get(req.pid)?.memoryBytes ?? 0; // read before it is marked moving (the snapshot then skips it)
    const source = table.sourceProcess(req.pid, req.to);
    const { sha256: hash } = table.get(req.pid)!; // now: it may end while we dial
    const bytes = table.programBytes(req.pid);
    const id = randomUUID().slice(0, 8);
    let conn: Connection;
    try { conn = await this.connectTo(req.to); } catch (e) { source.resume(); throw e; }
    const channel = new ConnectionChannel(conn, id, this.ctx.faults, {
      pid: req.pid, sha256: hash, pageSize, algorithm: strategy.algorithm, memoryBytes: inUse, postcopy: switches, compress: req.options?.compress ?? 'none',
      program: () => bytes, to: req.to, pageServer: this.pageServer,
      dialAgain: () => this.ctx.dialNode(req.to),
      ...(strategy.fileServer === 'only' ? { holder: fileServer } : {}),
    });
    const link = fileServer ? this.fileServer.link({ mid: id, pid: req.pid, runner: req.to, pageSize, node: fileServer }) : undefined;
    const m = new Migration({ id, from: this.ctx.name, to: req.to, strategy, process: source, channel, pageSize, options: req.options, log: this.ctx.log, fileServer: link });
    this.active.set(req.pid, m);
    if (onProgress) m.on('progress', onProgress);
    const metrics = await m.done;
    this.active.delete(req.pid);
    this.history.push(metrics);
    if (this.history.length > HISTORY) this.history.shift();
    const hold = channel.hold;
    const deps = metrics.residualDependencies;
    if (hold && !deps.includes(this.ctx.name)) this.pageServer.release(id, { reason: metrics.state === 'completed' ? (link && deps.includes(link.node) ? `handed over to file server ${link.node}` : 'post-processing ended') : `migration ${metrics.state}` });
    else if (hold) this.closeWhenEnded(id, m, hold.ended); // the process runs on req.to with pages here
    if (link) {
      // Flushing, freeze-free: the file server holds the pages; its store's end closes the record.
      if (metrics.state === 'completed' && deps.includes(link.node)) this.closeWhenEnded(id, m, link.ended);
      else this.fileServer.forget(id);
    }
    return metrics;
  }

  /** The record of a migration whose process still depends on a node closes when that ends. */
  private closeWhenEnded(id: string, m: Migration, ended: Promise<HoldEnd>): void {
    this.residual.set(id, m);
    void ended.then((end) => {
      this.residual.delete(id);
      const final = m.residualEnded(end.stats);
      const i = this.history.findIndex((x) => x.id === id);
      if (i >= 0) this.history[i] = final;
    });
  }

  /** Cancel the migration of a process of this node. */
  cancel(pid: string): { id: string } {
    const m = this.active.get(pid);
    if (!m) throw new FerryError('no-migration', `process ${pid} is not migrating from ${this.ctx.name}`);
    if (!m.cancel()) throw new FerryError('too-late', `migration ${m.metrics.m.id} of ${pid} is ${m.state} and committing: it can no longer be cancelled`);
    return { id: m.metrics.m.id };
  }

  isMigrating(pid: string): boolean { return this.active.has(pid); }

  /** A migration from this node, or one to it that has not yet resumed its process, is under way. */
  busy(): boolean {
    if (this.active.size > 0) return true;
    for (const inc of this.incoming.values()) if (inc.state !== 'running' && inc.state !== 'aborted') return true;
    return false;
  }

  /** Cancel pid's migration if it still can be (one committing runs to its end), and wait
   *  until it has ended either way: the process is then here or on the destination. */
  async settle(pid: string): Promise<void> {
    const m = this.active.get(pid);
    if (!m) return;
    m.cancel();
    await m.done.catch(() => {});
  }

  /** The migration's connection: dialled by the destination, which then reads the page stream
   *  into one buffer (socket-input.ts); dialled from here if it cannot (an older node, a peer
   *  not yet up in membership). */
  private async connectTo(to: string): Promise<Connection> {
    try { return await this.ctx.dialledBy(to); } catch (e) {
      this.ctx.log?.(`${to} did not dial back (${(e as Error).message}); dialling it`);
      return this.ctx.dialNode(to);
    }
  }

  /** Past migrations from this node (live for those whose process still depends on it), and the ones under way. */
  list(): MigrationMetrics[] {
    return [...this.history.map((h) => this.residual.get(h.id)?.metrics.snapshot() ?? h), ...[...this.active.values()].map((m) => m.metrics.snapshot())];
  }

  // ---- destination side: handlers for every connection ----

  install(conn: Connection): void {
    conn.handle('MIG_SETUP', this.onSetup);
    conn.on('MIG_PAGES', this.onPages);
    conn.sinkBodies('MIG_PAGES', (h, n) => (h.z === undefined ? this.incoming.get(String(h.mid))?.pageSink(n) : undefined)); // applied as they arrive (compressed ones: whole)
    conn.handle('MIG_COMMIT', this.onCommit);
    conn.handle('MIG_QUERY', this.onQuery);
    conn.handle('MIG_DONE', this.onDone);
    conn.handle('MIG_RESUME', this.onResume);
    conn.handle('MIG_HANDOVER', this.onHandOver);
    this.pageServer.install(conn);
    this.fileServer.install(conn);
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
      let faulting: boolean, residual: boolean, temporaryStore: boolean;
      try { const s = strategyFor(algorithm); faulting = s.faulting === true; residual = s.residual === true; temporaryStore = s.temporaryStore === true; } catch (e) { throw new FerryError('bad-request', (e as Error).message); }
      const mayPostCopy = h.postcopy === true; // a pre-copy that may switch to post-copy at its freeze
      // Flushing: the pages are on a file server, not on the source.
      const holder = h.holder === undefined ? undefined : str(h, 'holder', 'MIG_SETUP');
      if (holder !== undefined && (!faulting || holder === this.ctx.name || !this.ctx.membership.has(holder)))
        throw new FerryError('bad-request', `MIG_SETUP: holder ${holder} is not another node of the cluster, or ${algorithm} does not fault`);
      inc = new IncomingMigration({ id: mid, pid, from: conn.peer.node, sha256: hash, pageSize, faulting, residual, mayPostCopy, temporaryStore, ...(holder ? { holder } : {}) }, this.ctx.log);
      this.incoming.set(mid, inc);
      // After the commit the source re-dials a broken link (MIG_RESUME) and pushes again: faults wait for it.
      conn.onClose(() => { inc!.abort(`the connection from ${conn.peer.node} closed`); inc!.sourceLost('the connection closed', inc!.state === 'running' ? RECOVERY_MS : undefined); });
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
    let body = msg.body;
    if (msg.header.postcopy === true) {
      const n = msg.header.staleBytes;
      try {
        if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > body.length) throw new FerryError('bad-request', `MIG_COMMIT: staleBytes ${String(n)} does not fit a ${body.length}-byte body`);
        inc.switchToPostCopy(body.subarray(0, n));
      } catch (e) { inc.abort((e as Error).message); throw e; }
      body = body.subarray(n);
    }
    try { inc.acceptState(body); } catch (e) { inc.abort((e as Error).message); throw e; }
    if (this.ctx.faults.hit('dest-commit', conn)) throw new FerryError('fault', 'dest-commit');
    let runningAt: number | null = null;
    await inc.commit(async (m) => {
      const img = m.image!;
      const x = img.meta.extra as unknown as ProcessExtra;
      const program = { path: img.meta.program, bytes: m.program!, hash: m.spec.sha256 };
      const fileOps = x.files === 'home' && x.home !== this.ctx.name ? this.ctx.homeFiles.remote(img.meta.pid, x.home) : undefined;
      let onFault: ((addr: number, len: number) => Promise<void>) | undefined;
      let dep: ReturnType<RemotePages['track']> | undefined;
      if (m.spec.faulting) {
        m.markAbsent(img.memory.logicalBytes); // before it runs: every page not here faults
        // Faults go to the source's page server, on connections of their own (remote-pages.ts).
        dep = this.remotePages.track({ pid: m.spec.pid, mid: m.spec.id, holder: m.spec.holder ?? m.spec.from, inc: m, pushes: !m.spec.residual });
        onFault = (addr, len) => dep!.fault(addr, len);
      }
      try {
        ({ runningAt } = await this.ctx.table.adopt({
          image: img, program, loaded: m.spec.faulting ? m.faultingModule! : m.loaded!, memory: m.memory!, prepared: m.prepared ?? undefined,
          sink: this.ctx.home.routeFor(img.meta.pid, x.home), fileOps, onFault, residual: m.spec.faulting ? [m.spec.holder ?? m.spec.from] : [],
        }));
      } catch (e) { this.remotePages.finished(m.spec.pid, m.spec.id); throw e; }
      dep?.started();
      const offset = img.wasi.stdinTakenBytes ?? 0;
      if (x.home === this.ctx.name) this.ctx.home.attach(img.meta.pid, this.ctx.name, offset);
      else {
        // Not awaited: the process runs; home learns where (stdin follows) a moment later.
        void this.ctx.membership.peer(x.home, { evenIfDown: true }).then((c) => c.send('HOME_ATTACH', { pid: img.meta.pid, node: this.ctx.name, stdinOffset: offset }))
          .catch((e: Error) => this.ctx.log?.(`could not tell home ${x.home} that ${img.meta.pid} runs here: ${e.message}`));
      }
    });
    if (this.ctx.faults.hit('dest-running', conn)) throw new FerryError('fault', 'dest-running');
    await this.ctx.faults.delay('dest-running');
    // When it ran again: how long ago by this node's clock, and the instant on the host's clock
    // (the source's down time ends then: node/downtime-end.ts).
    const answer = ranAgainAnswer(runningAt);
    await this.ctx.faults.delay('dest-answer-sent');
    return { header: { state: 'running', ...answer } };
  };

  /** Post-copy: the source has pushed everything; every page must be here. */
  private onDone = async (msg: Message): Promise<Reply> => {
    const inc = this.need(msg);
    if (inc.state !== 'running' || !inc.spec.faulting) throw new FerryError('bad-request', `MIG_DONE: migration ${inc.spec.id} is ${inc.state}, not in post-copy`);
    await this.remotePages.answered(inc.spec.pid, inc.spec.id);
    inc.finish();
    this.remotePages.finished(inc.spec.pid, inc.spec.id);
    await this.ctx.table.rehost(inc.spec.pid, await inc.steady!);
    return { header: { ...inc.faultStats() } };
  };

  /** Post-copy: the source lost the link during its push and reconnected: which pages are still absent. */
  private onResume = (msg: Message): Reply => {
    const inc = this.need(msg);
    if (inc.state !== 'running' || !inc.spec.faulting) throw new FerryError('migration-aborted', `MIG_RESUME: migration ${inc.spec.id} is ${inc.state}, not in post-processing`);
    const bits = inc.absentBitmap();
    this.ctx.log?.(`migration ${inc.spec.id} of ${inc.spec.pid}: the source reconnected; ${inc.absent} pages still absent`);
    return { header: { pages: bits.length * 8 }, body: bits };
  };

  /** Freeze-free: the source has flushed every page to a file server; fault there from now on. */
  private onHandOver = async (msg: Message, conn: Connection): Promise<Reply> => {
    const inc = this.need(msg);
    const holder = str(msg.header, 'holder', 'MIG_HANDOVER');
    if (inc.spec.from !== conn.peer.node) throw new FerryError('refused', `MIG_HANDOVER: migration ${inc.spec.id} came from ${inc.spec.from}, not ${conn.peer.node}`);
    if (holder === this.ctx.name || !this.ctx.membership.has(holder)) throw new FerryError('bad-request', `MIG_HANDOVER: ${holder} is not another node of the cluster`);
    const handedOver = await this.remotePages.handOver(inc.spec.pid, inc.spec.id, holder);
    if (handedOver) this.ctx.table.setResidual(inc.spec.pid, [holder]);
    return { header: { handedOver } };
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

interface ChannelSpec {
  pid: string;
  sha256: string;
  pageSize: number;
  algorithm: string;
  /** The process's memory in use when the migration starts (the destination pre-faults as much). */
  memoryBytes: number;
  /** It may switch to post-copy (--postcopy-after-rounds): the destination loads the faulting variant too. */
  postcopy?: boolean;
  compress: Codec;
  program: () => Uint8Array;
  dialAgain: () => Promise<Connection>;
  /** The destination's name (the process runs there after the commit). */
  to: string;
  pageServer: PageServer;
  /** Flushing: the node holding the pages (the file server), named in MIG_SETUP. */
  holder?: string;
}

/** MigrationChannel over a Connection (the transport side of the engine). */
class ConnectionChannel implements MigrationChannel {
  readonly linkBytesPerSec: number | null;
  readonly batchBytes: number;
  private sent0: number;
  private batches = 0;
  /** Bytes sent on connections given up since the last delta(). */
  private carried = 0;
  private committed = false;
  private pushBatches = 0;
  /** The page server's hold on the process's pages (faulting algorithms). */
  hold: Hold | undefined;
  private readonly packed: { codec: string; rawBytes: number; wireBytes: number };
  private readonly compressor: BatchCompressor;

  constructor(private conn: Connection, private readonly mid: string, private readonly faults: Faults, private readonly spec: ChannelSpec) {
    const rate = conn.shaper?.rate;
    this.linkBytesPerSec = rate !== undefined && Number.isFinite(rate) ? rate : null;
    this.batchBytes = this.linkBytesPerSec === null ? BATCH_BYTES : conn.chunkSize;
    this.sent0 = conn.stats.bytesSent;
    this.packed = { codec: spec.compress, rawBytes: 0, wireBytes: 0 };
    this.compressor = new BatchCompressor(spec.compress);
  }

  /** Wire bytes since the last call. */
  private delta(): number { const now = this.conn.stats.bytesSent; const d = now - this.sent0 + this.carried; this.sent0 = now; this.carried = 0; return d; }

  async setup(): Promise<number> {
    const codec = this.spec.compress;
    loadCodec(codec); // refuse here, before the destination does any work, if this node lacks it
    const head = {
      mid: this.mid, pid: this.spec.pid, sha256: this.spec.sha256, pageSize: this.spec.pageSize, algorithm: this.spec.algorithm, memoryBytes: this.spec.memoryBytes,
      ...(codec !== 'none' ? { compress: codec } : {}), ...(this.spec.postcopy ? { postcopy: true } : {}), ...(this.spec.holder ? { holder: this.spec.holder } : {}),
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
    // One buffer only where it is needed (a copy of 1 MiB costs the down time ~0.2 ms): to compress, or to damage (a fault test).
    const damaged = this.batches === 0 && this.faults.corrupts('src-batch');
    const raw = codec !== 'none' || damaged ? (Buffer.isBuffer(batch) ? batch : Buffer.concat(batch as Uint8Array[])) : null;
    // Compressing this batch overlaps the previous one's time on the wire.
    const z = await this.compressor.compress(raw!); // null: not compressed (it would not shrink), sent as it is
    this.packed.rawBytes += rawLength;
    this.packed.wireBytes += z ? z.length : rawLength;
    const head = z ? { mid: this.mid, z: codec, raw: rawLength } : { mid: this.mid };
    await this.onWire; // in order, one batch handed to the link at a time; a failed send fails here
    const sending = this.conn.send('MIG_PAGES', head, damaged ? this.faults.corrupt('src-batch', z ?? raw!) : (z ?? raw ?? batch));
    // Compressed bodies are copies: the engine may go on (and change the memory) while they go.
    if (codec !== 'none') { this.onWire = sending; sending.catch(() => {}); } else await sending;
    if (this.batches++ === 0) this.faults.hit('src-pages', this.conn);
    if (this.committed && this.pushBatches++ === 0) this.faults.hit('src-push', this.conn);
    return this.delta();
  }

  /** The last page batch is on the link (before the commit or MIG_DONE). */
  private onWire: Promise<void> = Promise.resolve();

  async commit(state: Buffer[], postcopy?: { stale: Uint8Array }): Promise<{ bytes: number; ranAgain: DowntimeEnd }> {
    await this.onWire;
    const sentAt = performance.now();
    try {
      const head = postcopy ? { mid: this.mid, postcopy: true, staleBytes: postcopy.stale.length } : { mid: this.mid };
      const answer = this.conn.request('MIG_COMMIT', head, Buffer.concat(postcopy ? [postcopy.stale, ...state] : state), { timeoutMs: COMMIT_TIMEOUT_MS });
      this.faults.hit('src-commit', this.conn);
      const r = await answer;
      const ranAgain = downtimeEnd(r.header, sentAt, performance.now());
      this.committed = true;
      await this.faults.delay('src-committed');
      return { bytes: this.delta(), ranAgain };
    } catch (e) {
      if (e instanceof FerryError && e.code === 'migration-aborted') throw e;
      // The answer was lost: ask on a fresh connection until the destination says, or is gone.
      let last = e as Error;
      for (let i = 0; i < QUERY_ATTEMPTS; i++) {
        let c: Connection | undefined;
        try {
          c = await this.spec.dialAgain();
          const r = await c.request('MIG_QUERY', { mid: this.mid }, undefined, { timeoutMs: 5000 });
          if (r.header.state === 'running') { this.committed = true; return { bytes: this.delta(), ranAgain: { at: performance.now(), by: 'answer' } }; }
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

  /** The node's page server answers the destination's faults, on any of its connections. */
  serveFaults(read: (pages: number[]) => Buffer | readonly Uint8Array[] | PageAnswer): void {
    this.hold = this.spec.pageServer.hold({ mid: this.mid, pid: this.spec.pid, runner: this.spec.to, read });
  }

  /** The link broke during post-processing: a new connection (re-dialled for up to RECOVERY_MS),
   *  and the pages the destination still lacks. */
  async recover(): Promise<number[]> {
    const t0 = Date.now();
    let last: Error | undefined;
    while (Date.now() - t0 < RECOVERY_MS) {
      let c: Connection | undefined;
      try {
        c = await this.spec.dialAgain();
        const r = await c.request('MIG_RESUME', { mid: this.mid }, undefined, { timeoutMs: 10_000 });
        const total = typeof r.header.pages === 'number' ? r.header.pages : 0;
        const bits = r.body, absent: number[] = [];
        for (let p = 0; p < total && (p >> 3) < bits.length; p++) if (bits[p >> 3]! & (1 << (p & 7))) absent.push(p);
        this.carried += this.conn.stats.bytesSent - this.sent0;
        this.conn.destroy();
        this.conn = c;
        this.sent0 = 0;
        this.onWire = Promise.resolve(); // a batch lost with the old link is pushed again
        return absent;
      } catch (e) {
        c?.destroy();
        if (e instanceof FerryError && (e.code === 'migration-aborted' || e.code === 'bad-request')) throw e;
        if (e instanceof FerryError && e.code === 'connect-failed' && /ECONNREFUSED/.test(String((e.cause as Error)?.message ?? e.message)))
          throw new FerryError('migration-failed', `destination ${this.spec.to} is gone (${e.message}) during post-processing`, { cause: e });
        last = e as Error;
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
    throw new FerryError('migration-failed', `lost the link to ${this.spec.to} during post-processing and could not reach it again within ${Math.round(RECOVERY_MS / 1000)} s${last ? `: ${last.message}` : ''}`);
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
  async handOver(holder: string): Promise<boolean> {
    const r = await this.conn.request('MIG_HANDOVER', { mid: this.mid, holder }, undefined, { priority: 'urgent', timeoutMs: 30_000 });
    return r.header.handedOver === true;
  }

  served(): Promise<string> | undefined { return this.hold?.ended.then((e) => e.reason); }

  abort(reason: FerryError): void {
    if (this.conn.isOpen) this.conn.send('MIG_ABORT', { mid: this.mid, reason: reason.message }).catch(() => {});
  }

  close(): void {
    void this.conn.close().catch(() => {});
  }
}
