// Membership and liveness. A node joins the cluster through any member (a
// 'join' request answered with the member list), then keeps one outgoing peer
// connection to every other member. Every HEARTBEAT_MS it sends each member a
// HEARTBEAT carrying its own member list (gossip: members learn of each other
// without a central list). A member not heard from for DOWN_AFTER_MS is marked
// down, and a heartbeat from it marks it up again. Its connection is kept until
// it has been silent for DROP_AFTER_MS: a node whose heartbeats were only late
// (a loaded machine, a stalled process) keeps the stdio relays and requests
// that ride on it; a dead daemon closes it at once anyway, and a host gone
// without a word has it dropped then, after which the node keeps redialling.
// A node that stops says so (leaving), and is marked 'left' at once.
import { FerryError } from '../errors.ts';
import type { Connection, Message } from '../transport/index.ts';
import { str } from './fields.ts';

export const HEARTBEAT_MS = 500;
export const DOWN_AFTER_MS = 2000;
export const DROP_AFTER_MS = 15_000;
const REDIAL_DOWN_MS = 1000;

export type MemberState = 'up' | 'down' | 'left';

/** What a member that is not up is, for errors: "b has left the cluster", "c is down (silent for 6.2 s)". */
export function notUp(name: string, state: string, silentMs: number): string {
  return state === 'left' ? `${name} has left the cluster` : `${name} is ${state} (silent for ${(silentMs / 1000).toFixed(1)} s)`;
}

export interface MemberInfo {
  name: string;
  addr: string;
  state: MemberState;
  self: boolean;
  /** ms since this node last heard from the member (0 for itself). */
  lastSeenMsAgo: number;
  /** When the member entered its current state (ISO time). */
  since: string;
  /** What the node serves besides running processes (e.g. 'file-server'), as it announced. */
  roles: string[];
}

interface Member {
  name: string;
  addr: string;
  state: MemberState;
  lastSeen: number;
  since: number;
  roles: string[];
  conn?: Connection;
  dialing?: Promise<Connection>;
  lastDial: number;
  /** The silent listeners heard of this down period already. */
  toldSilent?: boolean;
}

export interface MembershipOptions {
  name: string;
  addr: string;
  /** Open a peer connection to a member's address (handlers installed). */
  dial: (addr: string) => Promise<Connection>;
  /** This node's roles, announced in joins and heartbeats. */
  roles?: string[];
  log?: (msg: string) => void;
}

/** Roles as announced by a peer: a short list of short names (anything else is ignored). */
function rolesOf(v: unknown): string[] | undefined {
  if (!Array.isArray(v)) return undefined;
  return v.filter((r): r is string => typeof r === 'string' && r.length <= 64).slice(0, 16);
}

export class Membership {
  private readonly members = new Map<string, Member>();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** When tick last ran: a late tick means this node's own loop stalled. */
  private lastTick = Date.now();

  private readonly silentListeners: ((name: string, silentMs: number) => void)[] = [];

  constructor(private readonly opts: MembershipOptions) {}

  /** `fn` hears of a member down and silent for DROP_AFTER_MS, once each time it goes silent. */
  onSilent(fn: (name: string, silentMs: number) => void): void { this.silentListeners.push(fn); }

  get name(): string { return this.opts.name; }

  /** Join through any of the seeds; throws if none answers. */
  async join(seeds: string[]): Promise<void> {
    const errors: string[] = [];
    for (const seed of seeds) {
      let conn: Connection | undefined;
      try {
        conn = await this.opts.dial(seed);
        const reply = await conn.request('REQUEST', { method: 'join', name: this.opts.name, addr: this.opts.addr, roles: this.roles }, undefined, { timeoutMs: 10_000 });
        const seedName = conn.peer.node;
        const m = this.learn(seedName, seed);
        if (m) { this.adopt(m, conn); this.markUp(m); } else conn.destroy();
        this.gossip(reply.header.members);
        this.opts.log?.(`joined the cluster through ${seedName} at ${seed}`);
        return;
      } catch (e) {
        conn?.destroy(); // a refused join (a taken name) must not keep the connection, nor the process, alive
        errors.push(`${seed}: ${(e as Error).message}`);
      }
    }
    throw new FerryError('join-failed', `cannot join the cluster: ${errors.join('; ')}`);
  }

  start(): void {
    this.lastTick = Date.now();
    this.timer = setInterval(() => this.tick(), HEARTBEAT_MS);
    this.timer.unref();
  }

  /** Tell every member this node is leaving, then drop the peer connections. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    const hb = this.heartbeat(true);
    await Promise.all([...this.members.values()].map(async (m) => {
      const conn = m.conn;
      if (conn?.isOpen) {
        await Promise.race([conn.send('HEARTBEAT', hb).catch(() => {}), new Promise((r) => setTimeout(r, 500))]);
        await Promise.race([conn.close().catch(() => {}), new Promise((r) => setTimeout(r, 1000))]);
        conn.destroy();
      }
    }));
  }

  /** Answer a 'join' request from a new (or restarted) member. */
  onJoin(msg: Message, conn: Connection): { members: MemberInfo[] } {
    const name = str(msg.header, 'name', 'join');
    const addr = str(msg.header, 'addr', 'join');
    if (name === this.opts.name) throw new FerryError('name-taken', `node name ${name} is this node's own name`);
    const m = this.members.get(name);
    if (m && m.state === 'up' && m.addr !== addr) throw new FerryError('name-taken', `a node named ${name} is already up at ${m.addr}`);
    const member = this.learn(name, addr, true, rolesOf(msg.header.roles))!;
    member.lastSeen = Date.now();
    this.markUp(member);
    void conn;
    return { members: this.list() };
  }

  onHeartbeat(msg: Message): void {
    const h = msg.header;
    if (typeof h.node !== 'string' || typeof h.addr !== 'string' || h.node === this.opts.name) return;
    let m = this.members.get(h.node);
    if (h.leaving === true) {
      if (m && m.state !== 'left') {
        this.setState(m, 'left');
        m.conn?.destroy();
        m.conn = undefined;
      }
      return;
    }
    if (!m || m.addr !== h.addr) m = this.learn(h.node, h.addr, true);
    if (!m) return;
    const roles = rolesOf(h.roles);
    if (roles) m.roles = roles;
    m.lastSeen = Date.now();
    this.markUp(m);
    this.gossip(h.members);
  }

  /** The member list, this node first. */
  list(): MemberInfo[] {
    const now = Date.now();
    const self: MemberInfo = { name: this.opts.name, addr: this.opts.addr, state: 'up', self: true, lastSeenMsAgo: 0, since: new Date(this.startedAt).toISOString(), roles: this.roles };
    const others = [...this.members.values()].sort((a, b) => a.name.localeCompare(b.name)).map((m): MemberInfo => ({
      name: m.name, addr: m.addr, state: m.state, self: false, lastSeenMsAgo: Math.max(0, now - m.lastSeen), since: new Date(m.since).toISOString(), roles: [...m.roles],
    }));
    return [self, ...others];
  }

  private readonly startedAt = Date.now();

  get roles(): string[] { return [...(this.opts.roles ?? [])]; }

  /** Members that have not left (not this node): up, or down but perhaps only slow. */
  unleftMembers(): string[] {
    return [...this.members.values()].filter((m) => m.state !== 'left').map((m) => m.name);
  }

  has(name: string): boolean { return name === this.opts.name || this.members.has(name); }

  /** The peer connection to a member, dialled if need be. A member marked down is refused
   *  unless `evenIfDown`: a lookup may still try it, since a node whose heartbeats were late
   *  (a loaded machine) is down here before it is back up. */
  async peer(name: string, o: { evenIfDown?: boolean } = {}): Promise<Connection> {
    const m = this.members.get(name);
    if (!m) throw new FerryError('no-such-node', `no node named ${name} in the cluster (known: ${[this.opts.name, ...this.members.keys()].join(', ')})`);
    if (m.state === 'left' || (m.state === 'down' && !o.evenIfDown)) throw new FerryError('node-down', `node ${notUp(name, m.state, Date.now() - m.lastSeen)}`);
    if (m.conn?.isOpen) return m.conn;
    return this.dial(m);
  }

  // ---- internals ----

  private tick(): void {
    if (this.stopped) return;
    const now = Date.now();
    // This node's own loop stalled (timers run before the I/O that waited meanwhile): the
    // heartbeats that came in the stall are not read yet, so no one is judged on this tick.
    const stalled = now - this.lastTick > 2 * HEARTBEAT_MS;
    if (stalled) this.opts.log?.(`this node's heartbeat timer ran ${now - this.lastTick} ms after the last one: no member judged down on this tick`);
    this.lastTick = now;
    const hb = this.heartbeat(false);
    for (const m of this.members.values()) {
      if (m.state === 'up' && !stalled && now - m.lastSeen > DOWN_AFTER_MS) {
        this.setState(m, 'down');
        this.opts.log?.(`node ${m.name} at ${m.addr} is down (silent for ${now - m.lastSeen} ms)`);
      }
      if (m.state === 'down' && !stalled && now - m.lastSeen > DROP_AFTER_MS) {
        if (m.conn) {
          this.opts.log?.(`node ${m.name} at ${m.addr}: silent for ${now - m.lastSeen} ms, its connection dropped`);
          m.conn.destroy();
          m.conn = undefined;
        }
        if (!m.toldSilent) {
          m.toldSilent = true;
          for (const fn of this.silentListeners) fn(m.name, now - m.lastSeen);
        }
      }
      if (m.state === 'left') continue;
      if (m.conn?.isOpen) { m.conn.send('HEARTBEAT', hb).catch(() => {}); continue; }
      if (!m.dialing && (m.state === 'up' || now - m.lastDial >= REDIAL_DOWN_MS)) {
        this.dial(m).then((c) => c.send('HEARTBEAT', this.heartbeat(false)).catch(() => {}), () => { /* retried on a later tick */ });
      }
    }
  }

  private heartbeat(leaving: boolean): Record<string, unknown> {
    return {
      node: this.opts.name, addr: this.opts.addr, roles: this.roles, ...(leaving ? { leaving: true } : {}),
      members: [...this.members.values()].filter((m) => m.state === 'up').map((m) => ({ name: m.name, addr: m.addr, roles: m.roles })),
    };
  }

  private dial(m: Member): Promise<Connection> {
    if (m.dialing) return m.dialing;
    m.lastDial = Date.now();
    const p = this.opts.dial(m.addr).then((conn) => {
      if (conn.peer.node !== m.name) {
        conn.destroy();
        throw new FerryError('wrong-node', `${m.addr} is node ${conn.peer.node}, not ${m.name}`);
      }
      if (this.stopped) { conn.destroy(); throw new FerryError('stopped', 'this node is stopping'); }
      this.adopt(m, conn);
      return conn;
    }).finally(() => { m.dialing = undefined; });
    m.dialing = p;
    return p;
  }

  private adopt(m: Member, conn: Connection): void {
    if (m.conn && m.conn !== conn) m.conn.destroy();
    m.conn = conn;
    conn.onClose(() => { if (m.conn === conn) m.conn = undefined; });
  }

  /** Add a member we did not know (or that moved address). Returns it, or undefined for this node. */
  private learn(name: string, addr: string, update = false, roles?: string[]): Member | undefined {
    if (name === this.opts.name) return undefined;
    const old = this.members.get(name);
    if (old) {
      if (roles) old.roles = roles;
      if (update && old.addr !== addr) {
        old.addr = addr;
        old.conn?.destroy();
        old.conn = undefined;
      }
      return old;
    }
    const now = Date.now();
    const m: Member = { name, addr, state: 'up', lastSeen: now, since: now, lastDial: 0, roles: roles ?? [] };
    this.members.set(name, m);
    this.opts.log?.(`node ${name} at ${addr} joined`);
    return m;
  }

  private gossip(list: unknown): void {
    if (!Array.isArray(list)) return;
    for (const e of list.slice(0, 4096)) {
      if (e && typeof e === 'object' && typeof (e as { name?: unknown }).name === 'string' && typeof (e as { addr?: unknown }).addr === 'string') {
        const { name, addr } = e as { name: string; addr: string };
        if (!this.members.has(name)) this.learn(name, addr, false, rolesOf((e as { roles?: unknown }).roles));
      }
    }
  }

  private markUp(m: Member): void {
    if (m.state !== 'up') {
      this.opts.log?.(`node ${m.name} at ${m.addr} is up`);
      this.setState(m, 'up');
    }
  }

  private setState(m: Member, s: MemberState): void {
    m.state = s;
    m.since = Date.now();
    if (s === 'up') m.toldSilent = false;
  }
}
