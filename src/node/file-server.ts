// File servers (Sprite's network file server, as Flushing and Freeze Free use
// it): a node started with `--role file-server` keeps backing stores of
// processes' pages, one store per migration, and serves the running node's page
// faults from it through its page server (page-server.ts: PAGE_REQUEST on any
// connection from that node, RESIDUAL_END when the dependency is over).
//
//   S -> F  PAGE_STORE {mid, pid, runner, pageSize}                   open (setup): F: {stored: 0}
//   S -> F  PAGE_STORE {mid, ...} + page batch                          F: {stored} once written
//   S -> F  PAGE_STORE {mid, ..., seal: pages}                          F: every page is here; serves runner from now on
//   S -> F  PAGE_STORE {mid, ..., drop: reason}                         F: the store is dropped
//   F -> S  PAGE_STORE_ENDED {mid, pid, reason, stats?}                 the store is gone (the source's record closes)
//
// Where a store lives: in the file server's memory, as a sparse 4 GiB
// reservation laid out like the process's own memory (page i at i x pageSize;
// untouched pages cost nothing and read as zero, like a sparse backing file).
// Not on disk: a store lives exactly as long as the dependency, and the
// dependency cannot outlive the daemon (the holds and the running node's
// connection die with it; a restarted file server knows no holds), so a disk
// copy would buy no durability the protocol could use, while writing it would
// add to Flushing's down time, which the flush is part of.
//
// A store is served only once sealed (the source has flushed every non-zero
// page, so a page it never got is a zero page). An unsealed store is dropped
// when the source's connection closes; a sealed one lives until the running
// node ends the dependency (the process ended, has every page, or pulled them
// all before moving on), the runner leaves the cluster, or the source drops it.
// While it holds stores the file server has dependents (`ferry node stop`
// refuses, as for any page server).
//
// The source side (StoreLink) is the engine's FileServerLink over a connection
// of its own; it learns the end of the store from PAGE_STORE_ENDED, so the
// migration's record can close (total time, the destination's fault stats).
import { FerryError } from '../errors.ts';
import { applyPageBatch, decodePageBatch, encodePageBatch, isZeroPage } from '../memory/page-batch.ts';
import type { FileServerLink } from '../migration/engine.ts';
import type { Connection, Message, Reply } from '../transport/index.ts';
import { newGuestMemory } from '../vm/process.ts';
import { BOOKKEEPING_BASE } from '../vm/layout.ts';
import { str } from './fields.ts';
import { notUp, type Membership } from './membership.ts';
import { holdEndOf, type Hold, type HoldEnd, type PageServer } from './page-server.ts';

export const FILE_SERVER_ROLE = 'file-server';
/** Roles a node may take (`ferry node start --role`). */
export const ROLES = [FILE_SERVER_ROLE] as const;

/** Largest store, in bytes: a process's largest logical memory. */
const STORE_BYTES = BOOKKEEPING_BASE;
/** Page batches per request on an unshaped link (a shaped one uses its chunk size). */
const BATCH_BYTES = 1024 * 1024;
const STORE_TIMEOUT_MS = 120_000;
/** Stores kept at once, at most (each is a 4 GiB virtual reservation). */
const MAX_STORES = 256;
const CHECK_MS = 1000;
/** A file server down this long will not end its stores' records any more. */
const DOWN_GRACE_MS = 90_000;

interface Store {
  mid: string;
  pid: string;
  /** The node that flushed the pages (told when the store ends). */
  source: string;
  /** The node running the process: the only one served. */
  runner: string;
  pageSize: number;
  memory: Uint8Array;
  maxPages: number;
  pages: number;
  /** Pages of the address space, once sealed. */
  sealed: number | null;
  hold?: Hold;
}

export interface FileServerContext {
  name: string;
  /** This node has the file-server role (it keeps stores). */
  enabled: boolean;
  membership: Membership;
  pageServer: PageServer;
  dialNode(name: string): Promise<Connection>;
  log?: (m: string) => void;
}

export interface StoreLinkSpec { mid: string; pid: string; runner: string; pageSize: number; node: string }

export class FileServer {
  private readonly stores = new Map<string, Store>(); // mid -> store (this node as file server)
  private readonly links = new Map<string, StoreLink>(); // mid -> link (this node as source)
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly ctx: FileServerContext) {}

  install(conn: Connection): void {
    conn.handle('PAGE_STORE', this.onStore);
    conn.on('PAGE_STORE_ENDED', this.onEnded);
  }

  /** The file server for a migration from `from` to `to`: `named` if given (it must be up and
   *  have the role), else any up node with the role other than those two. */
  pick(from: string, to: string, algorithm: string, named?: string): string {
    const members = this.ctx.membership.list();
    const hint = `start one with: ferry node start --role ${FILE_SERVER_ROLE} ...`;
    if (named !== undefined) {
      const m = members.find((x) => x.name === named);
      if (!m) throw new FerryError('no-such-node', `--file-server ${named}: no node named ${named} in the cluster`);
      if (!m.roles.includes(FILE_SERVER_ROLE)) throw new FerryError('no-file-server', `--file-server ${named}: node ${named} does not have the ${FILE_SERVER_ROLE} role (its roles: ${m.roles.join(', ') || 'none'})`);
      if (m.state !== 'up') throw new FerryError('no-file-server', `--file-server ${named}: node ${notUp(named, m.state, m.lastSeenMsAgo)}`);
      if (named === from || named === to) throw new FerryError('no-file-server', `--file-server ${named}: the file server must be neither the source (${from}) nor the destination (${to})`);
      return named;
    }
    const m = members.find((x) => x.state === 'up' && x.roles.includes(FILE_SERVER_ROLE) && x.name !== from && x.name !== to);
    if (!m) throw new FerryError('no-file-server', `${algorithm} needs a file server: no node of the cluster other than ${from} and ${to} has the ${FILE_SERVER_ROLE} role and is up (${hint})`);
    return m.name;
  }

  /** The source's link to the file server for one migration (the engine's FileServerLink). */
  link(spec: StoreLinkSpec): StoreLink {
    const l = new StoreLink(spec, this.ctx);
    this.links.set(spec.mid, l);
    void l.ended.then(() => this.links.delete(spec.mid));
    this.timer ??= setInterval(() => this.check(), CHECK_MS);
    this.timer.unref();
    return l;
  }

  /** The migration left no dependency on the file server: stop waiting for its store's end. */
  forget(mid: string): void {
    this.links.get(mid)?.end({ reason: 'no dependency' });
    this.links.delete(mid);
    if (this.links.size === 0 && this.timer) { clearInterval(this.timer); this.timer = undefined; }
  }

  // ---- this node as file server ----

  private onStore = (msg: Message, conn: Connection): Reply => {
    const h = msg.header;
    if (!this.ctx.enabled) throw new FerryError('not-a-file-server', `node ${this.ctx.name} is not a file server (start it with --role ${FILE_SERVER_ROLE})`);
    if (conn.peer.role !== 'node') throw new FerryError('refused', 'PAGE_STORE: only nodes store pages');
    const mid = str(h, 'mid', 'PAGE_STORE');
    const source = conn.peer.node;
    let st = this.stores.get(mid);
    if (st && st.source !== source) throw new FerryError('refused', `PAGE_STORE: the store of migration ${mid} belongs to node ${st.source}, not ${source}`);
    if (h.drop !== undefined) {
      if (st) this.drop(st, `the source dropped it (${typeof h.drop === 'string' ? h.drop.slice(0, 512) : 'no reason given'})`);
      return { header: { dropped: st !== undefined } };
    }
    if (!st) st = this.open(mid, h, conn);
    if (msg.body.length) {
      if (st.sealed !== null) throw new FerryError('bad-request', `PAGE_STORE: the store of ${st.pid} (migration ${mid}) is sealed`);
      const batch = decodePageBatch(msg.body, st.pageSize, st.maxPages);
      applyPageBatch(batch, st.memory, st.pageSize);
      st.pages += batch.indices.length;
    }
    if (h.seal !== undefined) {
      const n = h.seal;
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > st.maxPages) throw new FerryError('bad-request', `PAGE_STORE: seal must be the address space in pages (0 to ${st.maxPages})`);
      if (st.sealed === null) this.seal(st, n);
    }
    return { header: { stored: st.pages } };
  };

  private open(mid: string, h: Message['header'], conn: Connection): Store {
    const pid = str(h, 'pid', 'PAGE_STORE'), runner = str(h, 'runner', 'PAGE_STORE');
    const pageSize = h.pageSize;
    if (pageSize !== 4096 && pageSize !== 16384 && pageSize !== 65536) throw new FerryError('bad-request', `PAGE_STORE: page size ${String(pageSize)} (4096, 16384 or 65536)`);
    if (!this.ctx.membership.has(runner) || runner === this.ctx.name) throw new FerryError('bad-request', `PAGE_STORE: runner ${runner} is not another node of the cluster`);
    if (this.stores.size >= MAX_STORES) throw new FerryError('busy', `file server ${this.ctx.name} keeps ${this.stores.size} stores already`);
    const st: Store = {
      mid, pid, source: conn.peer.node, runner, pageSize, memory: new Uint8Array(newGuestMemory().buffer),
      maxPages: STORE_BYTES / pageSize, pages: 0, sealed: null,
    };
    this.stores.set(mid, st);
    conn.onClose(() => { if (this.stores.get(mid) === st && st.sealed === null) this.drop(st, `the connection from ${st.source} closed before every page was stored`); });
    this.ctx.log?.(`storing pages of ${pid} for ${runner} (migration ${mid}, from ${st.source})`);
    return st;
  }

  /** Every page is here: serve the runner's faults until the dependency ends. */
  private seal(st: Store, pages: number): void {
    st.sealed = pages;
    st.hold = this.ctx.pageServer.hold({ mid: st.mid, pid: st.pid, runner: st.runner, read: (want) => this.read(st, want) });
    this.ctx.log?.(`serving pages of ${st.pid} to ${st.runner}: ${st.pages} pages stored (${(st.pages * st.pageSize / 1048576).toFixed(1)} MiB), ${pages} in its address space`);
    void st.hold.ended.then((end) => this.ended(st, end));
  }

  private read(st: Store, want: number[]): Buffer {
    const data: number[] = [], zero: number[] = [];
    for (const p of want) {
      if (p >= (st.sealed ?? 0)) throw new FerryError('bad-request', `page ${p} of ${st.pid} is outside its address space (${st.sealed} pages)`);
      if (isZeroPage(st.memory, p, st.pageSize)) zero.push(p); else data.push(p);
    }
    return encodePageBatch(st.memory, st.pageSize, data, zero);
  }

  private drop(st: Store, reason: string): void {
    if (this.stores.get(st.mid) !== st) return;
    if (st.hold) { this.ctx.pageServer.release(st.mid, { reason }); return; } // ended() follows
    this.stores.delete(st.mid);
    this.ctx.log?.(`dropped the unsealed store of ${st.pid} (migration ${st.mid}): ${reason}`);
  }

  /** The dependency is over: free the store, tell the source (best effort). */
  private ended(st: Store, end: HoldEnd): void {
    if (this.stores.get(st.mid) === st) this.stores.delete(st.mid);
    st.memory = new Uint8Array(0);
    // A source taken for down may only be stalled: the notice waits on its connection (its record closes once it reads it).
    void this.ctx.membership.peer(st.source, { evenIfDown: true })
      .then((c) => c.send('PAGE_STORE_ENDED', { mid: st.mid, pid: st.pid, reason: end.reason, ...(end.stats ? { stats: { ...end.stats } } : {}) }))
      .catch((e: Error) => this.ctx.log?.(`could not tell ${st.source} that the store of ${st.pid} ended: ${e.message}`));
  }

  // ---- this node as source ----

  private onEnded = (msg: Message, conn: Connection): void => {
    const mid = msg.header.mid;
    const l = typeof mid === 'string' ? this.links.get(mid) : undefined;
    if (!l || conn.peer.node !== l.spec.node) return;
    l.end(holdEndOf(msg.header, 'the file server ended it'));
  };

  /** Records waiting on a file server that left (or stayed down) would wait forever. */
  private check(): void {
    const members = new Map(this.ctx.membership.list().map((m) => [m.name, m]));
    for (const l of [...this.links.values()]) {
      const m = members.get(l.spec.node);
      if (m?.state === 'left') l.end({ reason: `file server ${m.name} left the cluster` });
      else if (m?.state === 'down' && Date.now() - Date.parse(m.since) > DOWN_GRACE_MS) l.end({ reason: `file server ${m.name} has been down since ${m.since}` });
    }
  }
}

/** The source's side: one connection to the file server for one migration's store. */
export class StoreLink implements FileServerLink {
  readonly ended: Promise<HoldEnd>;
  private resolve!: (e: HoldEnd) => void;
  private conn: Connection | undefined;
  private sent0 = 0;
  batchBytes = BATCH_BYTES;

  constructor(readonly spec: StoreLinkSpec, private readonly ctx: FileServerContext) {
    this.ended = new Promise((r) => (this.resolve = r));
  }

  get node(): string { return this.spec.node; }
  get bytesSent(): number { return this.conn ? this.conn.stats.bytesSent - this.sent0 : 0; }

  private head(): Record<string, string | number> {
    const { mid, pid, runner, pageSize } = this.spec;
    return { mid, pid, runner, pageSize };
  }

  async open(): Promise<void> {
    const c = await this.ctx.dialNode(this.spec.node);
    this.conn = c;
    this.sent0 = c.stats.bytesSent;
    const rate = c.shaper?.rate;
    if (rate !== undefined && Number.isFinite(rate)) this.batchBytes = c.chunkSize;
    await this.request(this.head());
  }

  async store(batch: Buffer): Promise<void> { await this.request(this.head(), batch); }

  async seal(pages: number): Promise<void> { await this.request({ ...this.head(), seal: pages }); }

  drop(reason: string): void {
    if (this.conn?.isOpen) this.conn.request('PAGE_STORE', { ...this.head(), drop: reason }, undefined, { timeoutMs: 10_000 }).catch(() => {});
    this.end({ reason: `dropped: ${reason}` });
  }

  close(): void { void this.conn?.close().catch(() => {}); }

  /** The store ended (PAGE_STORE_ENDED, dropped, or the file server is gone). */
  end(e: HoldEnd): void { this.resolve(e); }

  private async request(header: Record<string, string | number>, body?: Buffer): Promise<void> {
    if (!this.conn) throw new FerryError('migration-failed', `file server ${this.spec.node}: not connected`);
    try {
      await this.conn.request('PAGE_STORE', header, body, { timeoutMs: STORE_TIMEOUT_MS });
    } catch (e) {
      const err = e as Error;
      throw new FerryError(e instanceof FerryError && e.code === 'not-a-file-server' ? 'no-file-server' : 'file-server-failed',
        `file server ${this.spec.node} could not store the pages of ${this.spec.pid}: ${err.message}`, { cause: e });
    }
  }
}
