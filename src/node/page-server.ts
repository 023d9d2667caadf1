// The page server (CRIU's page-server idea): after a migration that leaves
// pages behind (post-copy until its push ends, demand paging for the life of
// the process), the source node keeps the process's frozen memory and answers
// its page faults on ANY connection from the node running the process, not
// only the migration's own: a broken migration connection does not cut the
// process off its pages. The hold ends when the running node says the
// dependency is over (RESIDUAL_END: the process ended, has every page, or
// pulled them all before moving on), when the migration's own post-processing
// ends (post-copy's push), or when the running node is gone (it left the
// cluster, or has been down longer than a fault's recovery window).
//
//   D -> S  PAGE_REQUEST {mid, pid, pages} (urgent)      S: PAGE_DATA {mid, notModified?, inFlight?} + page batch (urgent)
//   D -> S  RESIDUAL_END {mid, pid, reason, stats?}       S: {} (the hold is dropped)
//
// A node holding pages of processes that run elsewhere has dependents: it
// refuses to stop while they run (daemon.ts, control.ts `node-stop`).
import { FerryError } from '../errors.ts';
import type { FaultStats } from '../migration/destination.ts';
import type { PageAnswer } from '../migration/engine.ts';
import type { Connection, Message, Reply } from '../transport/index.ts';
import type { Membership } from './membership.ts';

/** Largest page index a request may name (4 GiB of 4 KiB pages). */
export const MAX_PAGES = 1 << 20;
/** Pages per PAGE_REQUEST, at most. */
export const MAX_PAGES_PER_REQUEST = 256;
/** A running node down this long has lost its processes' faults anyway (remote-pages.ts gives up after 60 s). */
const DOWN_GRACE_MS = 90_000;
const CHECK_MS = 1000;

/** Why a hold ended, and the destination's fault statistics if it sent them. */
export interface HoldEnd { reason: string; stats?: FaultStats }

export interface HoldSpec {
  mid: string;
  pid: string;
  /** The node running the process: the only one served. */
  runner: string;
  /** These pages' bytes as a page batch (the engine's view of the frozen memory). */
  read(pages: number[]): Buffer | readonly Uint8Array[] | PageAnswer;
}

export interface Hold {
  readonly spec: HoldSpec;
  /** Resolves once the dependency is over. */
  readonly ended: Promise<HoldEnd>;
  /** Page requests answered so far. */
  readonly requests: number;
}

/** A process on another node that needs this node. */
export interface Dependent { pid: string; node: string; mid: string; since: string; nodeState: string }

interface Entry extends Hold {
  requests: number;
  since: number;
  done?: HoldEnd;
  resolve(e: HoldEnd): void;
}

export class PageServer {
  private readonly holds = new Map<string, Entry>(); // mid -> hold
  private timer: NodeJS.Timeout | undefined;
  private readonly listeners = new Set<() => void>();

  constructor(private readonly ctx: { name: string; membership: Membership; log?: (m: string) => void }) {}

  /** Serve this process's pages to its running node until release(). */
  hold(spec: HoldSpec): Hold {
    let resolve!: (e: HoldEnd) => void;
    const ended = new Promise<HoldEnd>((r) => (resolve = r));
    const e: Entry = { spec, ended, requests: 0, since: Date.now(), resolve };
    this.holds.set(spec.mid, e);
    this.timer ??= setInterval(() => this.check(), CHECK_MS);
    this.timer.unref();
    return e;
  }

  /** The dependency is over (idempotent). */
  release(mid: string, end: HoldEnd): void {
    const e = this.holds.get(mid);
    if (!e) return;
    this.holds.delete(mid);
    e.done = end;
    e.resolve(end);
    this.ctx.log?.(`no longer holding pages of ${e.spec.pid} for ${e.spec.runner} (migration ${mid}): ${end.reason}`);
    if (this.holds.size === 0 && this.timer) { clearInterval(this.timer); this.timer = undefined; }
    for (const fn of this.listeners) fn();
  }

  /** Called whenever a hold ends. */
  onChange(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Processes on other nodes that need this node's pages (nodeState: the membership's view of their node). */
  dependents(): Dependent[] {
    const states = new Map(this.ctx.membership.list().map((m) => [m.name, m.state]));
    return [...this.holds.values()].map((e) => ({
      pid: e.spec.pid, node: e.spec.runner, mid: e.spec.mid, since: new Date(e.since).toISOString(), nodeState: states.get(e.spec.runner) ?? 'unknown',
    }));
  }

  install(conn: Connection): void {
    conn.handle('PAGE_REQUEST', this.onRequest);
    conn.handle('RESIDUAL_END', this.onEnd);
  }

  private find(h: Message['header'], what: string, conn: Connection): Entry {
    const mid = h.mid, pid = h.pid;
    let e = typeof mid === 'string' ? this.holds.get(mid) : undefined;
    if (!e && typeof pid === 'string') e = [...this.holds.values()].reverse().find((x) => x.spec.pid === pid);
    if (!e) throw new FerryError('pages-gone', `${what}: node ${this.ctx.name} holds no pages of ${typeof pid === 'string' ? pid : '?'} (migration ${typeof mid === 'string' ? mid : '?'})`);
    if (conn.peer.role !== 'node' || conn.peer.node !== e.spec.runner)
      throw new FerryError('refused', `${what}: the pages of ${e.spec.pid} are served to node ${e.spec.runner} only, not ${conn.peer.node}`);
    return e;
  }

  private onRequest = (msg: Message, conn: Connection): Reply => {
    const pages = msg.header.pages;
    if (!Array.isArray(pages) || pages.length === 0 || pages.length > MAX_PAGES_PER_REQUEST || !pages.every((p) => Number.isInteger(p) && (p as number) >= 0 && (p as number) < MAX_PAGES))
      throw new FerryError('bad-request', `PAGE_REQUEST: pages must be 1 to ${MAX_PAGES_PER_REQUEST} page numbers`);
    const e = this.find(msg.header, 'PAGE_REQUEST', conn);
    e.requests++;
    const body = e.spec.read(pages as number[]);
    if ('parts' in body) // assisted post-copy: some pages answered without their bytes
      return { code: 'PAGE_DATA', header: { mid: e.spec.mid, notModified: body.notModified, inFlight: body.inFlight }, body: Buffer.concat(body.parts as Uint8Array[]), priority: 'urgent' };
    return { code: 'PAGE_DATA', header: { mid: e.spec.mid }, body: Buffer.isBuffer(body) ? body : Buffer.concat(body as Uint8Array[]), priority: 'urgent' };
  };

  private onEnd = (msg: Message, conn: Connection): Reply => {
    const e = this.find(msg.header, 'RESIDUAL_END', conn);
    this.release(e.spec.mid, holdEndOf(msg.header, 'the running node ended it'));
    return { header: { ended: true } };
  };

  /** Drop holds whose running node left, or has been down past any fault's recovery. */
  private check(): void {
    const members = new Map(this.ctx.membership.list().map((m) => [m.name, m]));
    for (const e of [...this.holds.values()]) {
      const m = members.get(e.spec.runner);
      if (!m) continue;
      if (m.state === 'left') this.release(e.spec.mid, { reason: `node ${m.name} left the cluster` });
      else if (m.state === 'down' && Date.now() - Date.parse(m.since) > DOWN_GRACE_MS)
        this.release(e.spec.mid, { reason: `node ${m.name} has been down for ${Math.round((Date.now() - Date.parse(m.since)) / 1000)} s` });
    }
  }
}

/** A dependency's end as a message header says it ({reason, stats}), checked field by field. */
export function holdEndOf(h: Record<string, unknown>, fallback: string): HoldEnd {
  const reason = typeof h.reason === 'string' ? h.reason.slice(0, 512) : fallback;
  const s = h.stats as Record<string, unknown> | undefined;
  const stats: FaultStats | undefined = s && typeof s === 'object' && typeof s.remoteFaults === 'number' ? {
    remoteFaults: s.remoteFaults,
    faultRoundTripMs: typeof s.faultRoundTripMs === 'number' ? s.faultRoundTripMs : null,
    executionDelayMs: typeof s.executionDelayMs === 'number' ? s.executionDelayMs : 0,
  } : undefined;
  return { reason, stats };
}
