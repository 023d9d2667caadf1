// The running node's side of residual dependencies: a process that runs here
// with pages left on another node (post-copy until the push ends; demand
// paging until it has touched every page, moves on, or ends) fetches each
// absent page it touches from that node's page server (page-server.ts), over
// a connection of this node's own to the holder, dialled as needed.
//
// Recovery (QEMU's postcopy-paused and recover): when the link breaks, the
// fault pauses (the process blocks in it) and this node re-dials the holder
// until it answers, for up to RECOVERY_MS, then carries on. The holder is gone
// for good when the membership marks it down or left, when its address
// refuses connections (its daemon died), or when the retries run out: the
// process then fails with an error naming the node that held its pages.
//
// Before the process migrates again it pulls every absent page (settle), so a
// process depends on one node at most and never loses a page by moving on.
import { FerryError } from '../errors.ts';
import { decodePageBatch } from '../memory/page-batch.ts';
import type { FaultAnswer, IncomingMigration } from '../migration/destination.ts';
import type { Connection } from '../transport/index.ts';
import type { LoadedModule } from '../vm/cache.ts';
import type { Faults } from './faults.ts';
import type { Membership } from './membership.ts';
import { MAX_PAGES, MAX_PAGES_PER_REQUEST } from './page-server.ts';

/** How long a fault waits for an unreachable holder before the process fails. */
export const RECOVERY_MS = Number(process.env.FERRY_RECOVERY_MS ?? 60_000);
/** One request's wait (as before recovery existed): a retry resends pages, so not shorter. */
const ATTEMPT_TIMEOUT_MS = 30_000;
/** Pages per request when pulling everything (small, so a fault waits little behind it). */
const PULL_BATCH = 64;
const END_ATTEMPTS = 3;

export interface RemotePagesContext {
  name: string;
  membership: Membership;
  /** A new connection to a node, handlers installed. */
  dialNode(name: string): Promise<Connection>;
  faults: Faults;
  /** Every page is here: carry on in the tracked variant. */
  rehost(pid: string, loaded: LoadedModule): Promise<void>;
  log?: (m: string) => void;
}

export interface DependencySpec {
  pid: string;
  mid: string;
  /** The node holding the pages. */
  holder: string;
  inc: IncomingMigration;
  /** The holder pushes every page and ends the dependency itself (post-copy's MIG_DONE). */
  pushes: boolean;
}

class Dependency {
  ended = false;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(readonly spec: DependencySpec, private readonly owner: RemotePages) {}

  /** Settles once the fetch in flight (if any) is answered: the connection may close after that. */
  idle(): Promise<unknown> { return this.queue; }

  /** One fetch at a time: a fault and a pull never ask for the same page twice. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.queue.then(fn, fn);
    this.queue = p.catch(() => {});
    return p;
  }

  /** A page fault of the process on [addr, addr+len). */
  fault(addr: number, len: number): Promise<void> {
    return this.serial(async () => {
      await this.spec.inc.fault(addr, len, async (pages) => {
        // A host call may span more pages than one request carries: all but the last batch are applied here.
        for (; pages.length > MAX_PAGES_PER_REQUEST; pages = pages.slice(MAX_PAGES_PER_REQUEST))
          await this.spec.inc.applyAnswer(await this.owner.fetch(this, pages.slice(0, MAX_PAGES_PER_REQUEST)));
        return this.owner.fetch(this, pages);
      });
      if (!this.spec.pushes && !this.ended && this.spec.inc.absent === 0) void this.owner.complete(this, 'every page is here');
    });
  }

  /** Fault to another holder from now on (freeze-free's hand-over to the file server): after
   *  any fetch in flight, so no request is cut. False if the dependency has ended. */
  moveTo(holder: string): Promise<boolean> {
    return this.serial(async () => {
      if (this.ended) return false;
      this.spec.holder = holder;
      return true;
    });
  }

  /** The process runs: if nothing is absent (eager-dirty sent it all), the dependency ends at once. */
  started(): void {
    if (!this.spec.pushes && !this.ended && this.spec.inc.absent === 0) void this.owner.complete(this, 'every page came with the migration');
  }

  /** Fetch every page still absent (not counted as faults: the process does not wait for them). */
  async pullAll(): Promise<void> {
    while (!this.ended) {
      const more = await this.serial(async () => {
        const pages = this.spec.inc.absentPages(PULL_BATCH);
        if (pages.length) await this.spec.inc.applyAnswer(await this.owner.fetch(this, pages));
        return pages.length > 0;
      });
      if (!more) return;
    }
  }
}

export class RemotePages {
  private readonly deps = new Map<string, Dependency>(); // pid -> its dependency
  private readonly conns = new Map<string, Promise<Connection>>(); // holder -> connection
  /** Processes moving to the tracked variant now that every page is here (the table holds them meanwhile). */
  private readonly completing = new Map<string, Promise<void>>();

  constructor(private readonly ctx: RemotePagesContext) {}

  /** A process that just started here with its pages on spec.holder. */
  track(spec: DependencySpec): { fault(addr: number, len: number): Promise<void>; started(): void } {
    const d = new Dependency(spec, this);
    this.deps.set(spec.pid, d);
    return d;
  }

  has(pid: string): boolean { return this.deps.has(pid); }

  /** Before the process moves on: pull every absent page, end the dependency, drop the checks. */
  async settle(pid: string): Promise<void> {
    await this.completing.get(pid);
    const d = this.deps.get(pid);
    if (!d) return;
    const t0 = performance.now();
    const n = d.spec.inc.absent;
    await d.pullAll();
    this.ctx.log?.(`${pid} pulled its ${n} absent pages from ${d.spec.holder} in ${(performance.now() - t0).toFixed(0)} ms before moving on`);
    await this.complete(d, 'it pulled every page before moving on');
    await this.completing.get(pid); // a fault may have completed it meanwhile
  }

  /** Freeze-free: the source flushed everything to `holder`; fault there from now on. */
  async handOver(pid: string, mid: string, holder: string): Promise<boolean> {
    const d = this.deps.get(pid);
    if (!d || d.spec.mid !== mid) return false;
    const old = d.spec.holder;
    if (!(await d.moveTo(holder))) return false;
    this.ctx.log?.(`${pid} faults to ${holder} from now on (${old} flushed every page there)`);
    this.closeIdle(old);
    return true;
  }

  /** Post-copy's MIG_DONE came. The push skips pages the holder sent in answer to faults, and
   *  those answers come on another connection, which MIG_DONE may overtake: the fetch in flight
   *  (if any) is applied before every page is counted. */
  async answered(pid: string, mid: string): Promise<void> {
    const d = this.deps.get(pid);
    if (d && d.spec.mid === mid) await d.idle();
  }

  /** Post-copy's MIG_DONE: the holder pushed everything and ended the dependency itself. */
  finished(pid: string, mid: string): void {
    const d = this.deps.get(pid);
    if (!d || d.spec.mid !== mid) return;
    d.ended = true;
    this.deps.delete(pid);
    void d.idle().then(() => this.closeIdle(d.spec.holder)); // a fault in flight keeps its answer
  }

  /** The process ended here (exited, failed, killed): its holder may let go. */
  processEnded(pid: string, how: string): void {
    const d = this.deps.get(pid);
    if (d) this.end(d, `the process ${how}`);
  }

  /** Every page is here: tell the holder, carry on without present checks. */
  async complete(d: Dependency, reason: string): Promise<void> {
    if (d.ended) return;
    this.end(d, reason);
    const steady = d.spec.inc.steady;
    if (!steady) return;
    const pid = d.spec.pid;
    const p = steady.then((loaded) => this.ctx.rehost(pid, loaded)).catch((e: Error) => this.ctx.log?.(`${pid}: could not move to the tracked variant: ${e.message}`));
    this.completing.set(pid, p);
    await p;
    if (this.completing.get(pid) === p) this.completing.delete(pid);
  }

  private end(d: Dependency, reason: string): void {
    if (d.ended) return;
    d.ended = true;
    if (this.deps.get(d.spec.pid) === d) this.deps.delete(d.spec.pid);
    const { pid, mid, holder, inc } = d.spec;
    const stats = inc.faultStats();
    if (!d.spec.pushes) inc.release(); // post-copy's push still lands in it until MIG_DONE
    this.ctx.log?.(`${pid} no longer depends on ${holder}: ${reason}`);
    void (async () => {
      for (let i = 0; i < END_ATTEMPTS; i++) {
        try {
          const c = await this.conn(holder);
          await c.request('RESIDUAL_END', { mid, pid, reason, stats: { ...stats } }, undefined, { priority: 'urgent', timeoutMs: 5000 });
          break;
        } catch (e) {
          if (i === END_ATTEMPTS - 1 || this.gone(holder, e)) { this.ctx.log?.(`could not tell ${holder} that ${pid} no longer needs its pages: ${(e as Error).message}`); break; }
          await sleep(500);
        }
      }
      await d.idle();
      this.closeIdle(holder);
    })();
  }

  /** PAGE_REQUEST to the holder; a broken link pauses the fault and re-dials (see the header). */
  async fetch(d: Dependency, pages: number[]): Promise<FaultAnswer> {
    const { pid, mid, holder, inc } = d.spec;
    const lost = (why: string, cause?: unknown) =>
      new FerryError('pages-lost', `process ${pid} needs page ${pages[0]}, held by node ${holder}, ${why}`, { cause });
    let first = 0;
    for (let attempt = 0; ; attempt++) {
      if (attempt > 0) {
        // Pages that came meanwhile (the push) are not asked again: the holder would send them twice.
        pages = pages.filter((p) => !inc.isPresent(p));
        if (!pages.length) {
          this.ctx.log?.(`page faults of ${pid} resumed: the pages came meanwhile in ${holder}'s push after ${Date.now() - first} ms`);
          return { indices: new Uint32Array(0), data: new Uint8Array(0), zero: new Uint32Array(0) };
        }
      }
      try {
        const conn = await this.conn(holder);
        this.ctx.faults.hit('dest-fault', conn);
        const r = await conn.request('PAGE_REQUEST', { mid, pid, pages }, undefined, { priority: 'urgent', timeoutMs: ATTEMPT_TIMEOUT_MS });
        await this.ctx.faults.delay('dest-answer');
        if (attempt > 0) this.ctx.log?.(`page faults of ${pid} resumed: ${holder} answered again after ${Date.now() - first} ms (${attempt} retries)`);
        return { ...decodePageBatch(r.body, inc.spec.pageSize, MAX_PAGES), notModified: pageList(r.header.notModified, pages), inFlight: pageList(r.header.inFlight, pages) };
      } catch (e) {
        const err = e as Error;
        if (e instanceof FerryError && (e.code === 'pages-gone' || e.code === 'refused' || e.code === 'bad-request' || e.code === 'bad-frame'))
          throw lost(`which cannot serve it: ${err.message}`, e);
        if (this.gone(holder, e)) throw lost(`which is gone (${err.message})`, e);
        // Asked first, then judged: a holder marked down by a late heartbeat but answering still serves.
        const state = this.ctx.membership.list().find((m) => m.name === holder)?.state;
        if (state === 'down' || state === 'left') throw lost(`which is ${state} (${err.message})`, e);
        if (attempt === 0) { first = Date.now(); this.ctx.log?.(`page faults of ${pid} paused: ${holder} did not answer (${err.message}); re-dialling`); }
        if (Date.now() - first > RECOVERY_MS) throw lost(`which did not answer for ${Math.round(RECOVERY_MS / 1000)} s (${err.message})`, e);
        await sleep(Math.min(1000, 50 * 2 ** attempt));
      }
    }
  }

  /** The holder's daemon is not there any more (its address refuses connections). */
  private gone(holder: string, e: unknown): boolean {
    if (!(e instanceof FerryError) || e.code !== 'connect-failed') return false;
    return /ECONNREFUSED/.test(String((e.cause as Error | undefined)?.message ?? e.message));
  }

  private conn(holder: string): Promise<Connection> {
    let p = this.conns.get(holder);
    if (p) return p;
    p = this.ctx.dialNode(holder).then((c) => {
      c.onClose(() => { if (this.conns.get(holder) === p) this.conns.delete(holder); });
      return c;
    });
    p.catch(() => { if (this.conns.get(holder) === p) this.conns.delete(holder); });
    this.conns.set(holder, p);
    return p;
  }

  /** No process here depends on `holder` any more: close the connection to it. */
  private closeIdle(holder: string): void {
    if ([...this.deps.values()].some((d) => d.spec.holder === holder)) return;
    const p = this.conns.get(holder);
    this.conns.delete(holder);
    void p?.then((c) => c.close().catch(() => {}), () => {});
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A page list in a PAGE_DATA header (assisted post-copy): only pages the fault asked for. */
function pageList(v: unknown, asked: number[]): number[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((p) => asked.includes(p as number)))
    throw new FerryError('bad-frame', `PAGE_DATA names pages that were not asked for: ${JSON.stringify(v).slice(0, 80)}`);
  return v as number[];
}
