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
// Post-copy and demand paging, after the commit: page faults go to the source's
// page server on any connection (page-server.ts, remote-pages.ts):
//   D -> S  PAGE_REQUEST {mid, pid, pages} (urgent)                 S: PAGE_DATA + page batch
//   D -> S  RESIDUAL_END {mid, pid, reason, stats}                  (demand paging: the dependency is over)
// Post-copy's push, on the migration's connection:
//   S -> D  MIG_PAGES ... (the background push), then MIG_DONE {mid} D: {remoteFaults, ...} once every page is here
//   S -> D  MIG_RESUME {mid} (a fresh connection after the link broke) D: bitmap of the pages still absent
import { randomUUID } from 'node:crypto';
import { FerryError } from '../errors.ts';
import { IncomingMigration, type FaultStats } from '../migration/destination.ts';
import { decodePageBatch } from '../memory/page-batch.ts';
import { Migration, type MigrationChannel, type MigrationOptions } from '../migration/engine.ts';
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
import { PageServer, type Hold } from './page-server.ts';
import { RECOVERY_MS, RemotePages } from './remote-pages.ts';

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
  faults: Faults;
  log?: (m: string) => void;
}

export interface MigrateRequest { pid: string; to: string; algorithm?: string; variant?: string; pageSize?: number; options?: MigrationOptions }

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

  constructor(private readonly ctx: MigratorContext) {
    this.pageServer = new PageServer({ name: ctx.name, membership: ctx.membership, log: ctx.log });
    this.remotePages = new RemotePages({
      name: ctx.name, membership: ctx.membership, dialNode: ctx.dialNode, faults: ctx.faults, log: ctx.log,
      rehost: (pid, loaded) => ctx.table.rehost(pid, loaded),
    });
    ctx.table.onEnded((pid, how) => this.remotePages.processEnded(pid, how));
  }

  // ---- source side ----

  /** Move a process of this node; resolves with the final metrics (failed ones too). */
  async migrate(req: MigrateRequest, onProgress?: (p: Progress) => void): Promise<MigrationMetrics> {
    const { table, membership } = this.ctx;
    if (req.to === this.ctx.name) throw new FerryError('bad-argument', `process ${req.pid} already runs on ${req.to}`);
    if (!membership.has(req.to)) throw new FerryError('no-such-node', `no node named ${req.to} in the cluster`);
    const strategy = strategyFor(req.algorithm ?? 'total-copy', req.variant);
    const pageSize = req.pageSize ?? DEFAULT_PAGE_SIZE;
    // It depends on another node's pages: it pulls them first (it never depends on two nodes).
    if (table.get(req.pid)) await this.remotePages.settle(req.pid);
    const inUse = table.get(req.pid)?.memoryBytes ?? 0; // read before it is marked moving (the snapshot then skips it)
    const source = table.sourceProcess(req.pid, req.to);
    const { sha256: hash } = table.get(req.pid)!; // now: it may end while we dial
    const bytes = table.programBytes(req.pid);
    const id = randomUUID().slice(0, 8);
    let conn: Connection;
    try { conn = await this.ctx.dialNode(req.to); } catch (e) { source.resume(); throw e; }
    const channel = new ConnectionChannel(conn, id, this.ctx.faults, {
      pid: req.pid, sha256: hash, pageSize, algorithm: strategy.algorithm, memoryBytes: inUse,
      program: () => bytes, to: req.to, pageServer: this.pageServer,
      dialAgain: () => this.ctx.dialNode(req.to),
    });
    const m = new Migration({ id, from: this.ctx.name, to: req.to, strategy, process: source, channel, pageSize, options: req.options, log: this.ctx.log });
    this.active.set(req.pid, m);
    if (onProgress) m.on('progress', onProgress);
    const metrics = await m.done;
    this.active.delete(req.pid);
    this.history.push(metrics);
    if (this.history.length > HISTORY) this.history.shift();
    const hold = channel.hold;
    if (hold && metrics.residualDependencies.length === 0) this.pageServer.release(id, { reason: metrics.state === 'completed' ? 'post-processing ended' : `migration ${metrics.state}` });
    else if (hold) {
      // The process runs on req.to with pages here: the record closes when the dependency ends.
      this.residual.set(id, m);
      void hold.ended.then((end) => {
        this.residual.delete(id);
        const final = m.residualEnded(end.stats);
        const i = this.history.findIndex((x) => x.id === id);
        if (i >= 0) this.history[i] = final;
      });
    }
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

  /** Past migrations from this node (live for those whose process still depends on it), and the ones under way. */
  list(): MigrationMetrics[] {
    return [...this.history.map((h) => this.residual.get(h.id)?.metrics.snapshot() ?? h), ...[...this.active.values()].map((m) => m.metrics.snapshot())];
  }

  // ---- destination side: handlers for every connection ----

  install(conn: Connection): void {
    conn.handle('MIG_SETUP', this.onSetup);
    conn.on('MIG_PAGES', this.onPages);
    conn.sinkBodies('MIG_PAGES', (h, n) => this.incoming.get(String(h.mid))?.pageSink(n)); // applied as they arrive
    conn.handle('MIG_COMMIT', this.onCommit);
    conn.handle('MIG_QUERY', this.onQuery);
    conn.handle('MIG_DONE', this.onDone);
    conn.handle('MIG_RESUME', this.onResume);
    this.pageServer.install(conn);
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
      let faulting: boolean, residual: boolean;
      try { const s = strategyFor(algorithm); faulting = s.faulting === true; residual = s.residual === true; } catch (e) { throw new FerryError('bad-request', (e as Error).message); }
      inc = new IncomingMigration({ id: mid, pid, from: conn.peer.node, sha256: hash, pageSize, faulting, residual }, this.ctx.log);
      this.incoming.set(mid, inc);
      conn.onClose(() => inc!.abort(`the connection from ${conn.peer.node} closed`));
      this.forgetLater(mid);
    }
    await inc.setup(bytes, typeof h.memoryBytes === 'number' ? h.memoryBytes : 0);
    return { header: { ready: true } };
  };

  private onPages = (msg: Message, conn: Connection): void => {
    const inc = this.incoming.get(String(msg.header.mid));
    if (!inc) return;
    if (this.ctx.faults.hit('dest-pages', conn)) return;
    if (inc.state === 'running' && inc.spec.faulting) {
      // The background push: pages still absent are taken.
      try { inc.postPages(decodePageBatch(msg.body, inc.spec.pageSize, MAX_PAGES)); } catch (e) { this.ctx.log?.(`push of ${inc.spec.pid} refused: ${(e as Error).message}`); }
      return;
    }
    try { inc.pages(msg.body, msg.sunk); } catch (e) { inc.abort((e as Error).message); }
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
      let dep: ReturnType<RemotePages['track']> | undefined;
      if (m.spec.faulting) {
        m.markAbsent(img.memory.logicalBytes); // before it runs: every page not here faults
        // Faults go to the source's page server, on connections of their own (remote-pages.ts).
        dep = this.remotePages.track({ pid: m.spec.pid, mid: m.spec.id, holder: m.spec.from, inc: m, pushes: !m.spec.residual });
        onFault = (addr, len) => dep!.fault(addr, len);
      }
      try {
        await this.ctx.table.adopt({
          image: img, program, loaded: m.spec.faulting ? m.faultingModule! : m.loaded!, memory: m.memory!,
          sink: this.ctx.home.routeFor(img.meta.pid, x.home), fileOps, onFault, residual: m.spec.faulting ? [m.spec.from] : [],
        });
      } catch (e) { this.remotePages.finished(m.spec.pid, m.spec.id); throw e; }
      dep?.started();
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
    this.remotePages.finished(inc.spec.pid, inc.spec.id);
    await this.ctx.table.rehost(inc.spec.pid, inc.loaded!);
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
    setTimeout(() => this.incoming.delete(mid), 10 * 60_000).unref();
  }
}

interface ChannelSpec {
  pid: string;
  sha256: string;
  pageSize: number;
  algorithm: string;
  /** The process's memory in use when the migration starts (the destination pre-faults as much). */
  memoryBytes: number;
  program: () => Uint8Array;
  dialAgain: () => Promise<Connection>;
  /** The destination's name (the process runs there after the commit). */
  to: string;
  pageServer: PageServer;
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

  constructor(private conn: Connection, private readonly mid: string, private readonly faults: Faults, private readonly spec: ChannelSpec) {
    const rate = conn.shaper?.rate;
    this.linkBytesPerSec = rate !== undefined && Number.isFinite(rate) ? rate : null;
    this.batchBytes = this.linkBytesPerSec === null ? BATCH_BYTES : conn.chunkSize;
    this.sent0 = conn.stats.bytesSent;
  }

  /** Wire bytes since the last call. */
  private delta(): number { const now = this.conn.stats.bytesSent; const d = now - this.sent0 + this.carried; this.sent0 = now; this.carried = 0; return d; }

  async setup(): Promise<number> {
    const head = { mid: this.mid, pid: this.spec.pid, sha256: this.spec.sha256, pageSize: this.spec.pageSize, algorithm: this.spec.algorithm, memoryBytes: this.spec.memoryBytes };
    let r = await this.conn.request('MIG_SETUP', head, undefined, { timeoutMs: SETUP_TIMEOUT_MS });
    if (r.header.needModule === true) {
      await this.conn.sendStream(this.spec.program(), { kind: 'module', mid: this.mid });
      r = await this.conn.request('MIG_SETUP', { ...head, moduleStream: true }, undefined, { timeoutMs: SETUP_TIMEOUT_MS });
    }
    if (r.header.ready !== true) throw new FerryError('migration-failed', `destination did not get ready: ${JSON.stringify(r.header)}`);
    return this.delta();
  }

  async sendPages(batch: Buffer | readonly Uint8Array[]): Promise<number> {
    await this.conn.send('MIG_PAGES', { mid: this.mid }, batch);
    if (this.batches++ === 0) this.faults.hit('src-pages', this.conn);
    if (this.committed && this.pushBatches++ === 0) this.faults.hit('src-push', this.conn);
    return this.delta();
  }

  async commit(state: Buffer[]): Promise<number> {
    try {
      const answer = this.conn.request('MIG_COMMIT', { mid: this.mid }, Buffer.concat(state), { timeoutMs: COMMIT_TIMEOUT_MS });
      this.faults.hit('src-commit', this.conn);
      await answer;
      this.committed = true;
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
          if (r.header.state === 'running') { this.committed = true; return this.delta(); }
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
  serveFaults(read: (pages: number[]) => Buffer | readonly Uint8Array[]): void {
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
    const r = await this.conn.request('MIG_DONE', { mid: this.mid }, undefined, { timeoutMs: SETUP_TIMEOUT_MS });
    const h = r.header;
    const stats: FaultStats = {
      remoteFaults: typeof h.remoteFaults === 'number' ? h.remoteFaults : 0,
      faultRoundTripMs: typeof h.faultRoundTripMs === 'number' ? h.faultRoundTripMs : null,
      executionDelayMs: typeof h.executionDelayMs === 'number' ? h.executionDelayMs : 0,
    };
    return { bytes: this.delta(), stats };
  }

  abort(reason: FerryError): void {
    if (this.conn.isOpen) this.conn.send('MIG_ABORT', { mid: this.mid, reason: reason.message }).catch(() => {});
  }

  close(): void {
    void this.conn.close().catch(() => {});
  }
}
