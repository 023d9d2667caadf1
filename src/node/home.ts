// Home services (Sprite's home node): a process's stdio lives on the node
// where it was started, wherever it runs now.
//
// Output: the running node numbers each stdout/stderr write (seq), and sends
// it to the home node (HOME_OUTPUT), or hands it over directly when it runs
// at home. Writes may arrive out of order after a migration (old and new
// location use different connections); home delivers them to the client in
// seq order, and the exit (HOME_EXIT, carrying the count of writes before
// it) after the last one.
//
// Input: home keeps the client's stdin as a log with absolute offsets and
// forwards it to where the process runs (HOME_INPUT {offset}). A process
// that moved announces itself (HOME_ATTACH {stdinOffset}: what its image
// already accounts for); home resends from there and forgets what lies before.
import type { Connection, Message } from '../transport/index.ts';
import type { Membership } from './membership.ts';
import type { ProcessSink } from './process-table.ts';

/** Where a home session's output goes: the client (stdio.ts). */
export interface ClientSink {
  output(fd: 1 | 2, data: Uint8Array): void;
  exit(code: number, error?: { code: string; message: string }): void;
}

interface Session {
  client: ClientSink;
  next: number;
  held: Map<number, { fd: 1 | 2; data: Uint8Array }>;
  exit?: { seq: number; code: number; error?: { code: string; message: string } };
  /** The node running the process. */
  location: string;
  stdin: { base: number; chunks: Buffer[]; length: number; eof: boolean };
}

/** Where the running side delivers stdin: the process table. */
export type StdinTarget = (pid: string, offset: number, data: Uint8Array, eof: boolean) => void;

/** How many ended processes a home remembers (to say how a pid ended, not just "no such process"). */
const RECENT_ENDS = 1000;

export class HomeRouter {
  private readonly sessions = new Map<string, Session>();
  /** pid -> how it ended, for processes of this home whose exit has reached their client. */
  private readonly ends = new Map<string, string>();

  constructor(
    private readonly self: string,
    private readonly membership: Membership,
    private readonly stdinTarget: StdinTarget,
    private readonly log?: (m: string) => void,
    /** Told when a process of this home moves or ends (home-files.ts closes its handles). */
    private readonly listener?: { moved(pid: string, node: string): void; ended(pid: string): void },
  ) {
    membership.onSilent((node, silentMs) => this.lost(node, silentMs));
  }

  /** A process started here: its output goes to this client. */
  open(pid: string, client: ClientSink): void {
    this.sessions.set(pid, { client, next: 0, held: new Map(), location: this.self, stdin: { base: 0, chunks: [], length: 0, eof: false } });
  }

  has(pid: string): boolean { return this.sessions.has(pid); }

  /** How a process of this home ended ("ended on c (exit code 0)"), if it did recently. Wherever
   *  it ran last, its exit came here: the one node that knows a moved process has ended. */
  howEnded(pid: string): string | undefined { return this.ends.get(pid); }

  /** Forget a session whose process never started. */
  close(pid: string): void { this.sessions.delete(pid); }

  /** The sink for a process running on this node whose home is `home`. */
  routeFor(pid: string, home: string): ProcessSink {
    if (home === this.self) {
      return {
        output: (_pid, seq, fd, data) => this.deliver(pid, seq, fd, data),
        exit: (_pid, seq, code, error) => this.ended(pid, seq, code, error),
      };
    }
    // Even to a home marked down: it may be only stalled (membership.ts), its connection is kept
    // a while, and what is sent on it arrives once it reads again: an exit is not lost to a stall.
    const send = (what: 'HOME_OUTPUT' | 'HOME_EXIT', header: Record<string, unknown>, body?: Uint8Array) => {
      this.membership.peer(home, { evenIfDown: true }).then((c) => c.send(what, header, body)).catch((e: Error) => {
        this.log?.(`${what === 'HOME_EXIT' ? 'exit' : 'output'} of ${pid} is lost: home node ${home} unreachable (${e.message})`);
      });
    };
    return {
      output: (_pid, seq, fd, data) => send('HOME_OUTPUT', { pid, seq, fd }, data),
      exit: (_pid, seq, code, error) => send('HOME_EXIT', { pid, seq, code, ...(error ? { error } : {}) }),
    };
  }

  /** Stdin from the client of a process whose home is here. */
  input(pid: string, data: Uint8Array | undefined, eof: boolean): void {
    const s = this.sessions.get(pid);
    if (!s || s.stdin.eof) return;
    const offset = s.stdin.base + s.stdin.length;
    const bytes = Buffer.from(data ?? new Uint8Array(0));
    if (bytes.length) { s.stdin.chunks.push(bytes); s.stdin.length += bytes.length; }
    if (eof) s.stdin.eof = true;
    this.forward(pid, s, offset, bytes, eof);
  }

  /** A process whose home is here now runs on `node` and has consumed stdin up to `offset`. */
  attach(pid: string, node: string, offset: number): void {
    const s = this.sessions.get(pid);
    if (!s) return;
    s.location = node;
    // Forget what the process has taken; resend the rest.
    let drop = Math.max(0, Math.min(offset - s.stdin.base, s.stdin.length));
    s.stdin.base += drop;
    s.stdin.length -= drop;
    while (drop > 0) {
      const c = s.stdin.chunks[0]!;
      if (c.length <= drop) { s.stdin.chunks.shift(); drop -= c.length; } else { s.stdin.chunks[0] = c.subarray(drop); drop = 0; }
    }
    if (s.stdin.length || s.stdin.eof) this.forward(pid, s, s.stdin.base, Buffer.concat(s.stdin.chunks), s.stdin.eof);
    this.listener?.moved(pid, node);
    this.log?.(`${pid} now runs on ${node}`);
  }

  location(pid: string): string | undefined { return this.sessions.get(pid)?.location; }

  // ---- frames from running nodes ----

  onOutput = (msg: Message): void => {
    const { pid, seq, fd } = msg.header;
    if (typeof pid !== 'string' || typeof seq !== 'number' || (fd !== 1 && fd !== 2)) return;
    this.deliver(pid, seq, fd, msg.body);
  };

  onExit = (msg: Message): void => {
    const { pid, seq, code, error } = msg.header;
    if (typeof pid !== 'string' || typeof seq !== 'number' || typeof code !== 'number') return;
    const e = error as { code?: unknown; message?: unknown } | undefined;
    this.ended(pid, seq, code, e && typeof e.message === 'string' ? { code: String(e.code), message: e.message } : undefined);
  };

  onAttach = (msg: Message, from: Connection): void => {
    const { pid, node, stdinOffset } = msg.header;
    if (typeof pid !== 'string' || typeof node !== 'string' || typeof stdinOffset !== 'number' || node !== from.peer.node) return;
    this.attach(pid, node, stdinOffset);
  };

  /** HOME_INPUT at the running node. */
  onInput = (msg: Message): void => {
    const { pid, offset, eof } = msg.header;
    if (typeof pid !== 'string' || typeof offset !== 'number') return;
    this.stdinTarget(pid, offset, msg.body, eof === true);
  };

  // ---- internals ----

  /** A node silent for DROP_AFTER_MS: the processes of this home that ran there are taken for
   *  lost, and their terminals hear it (as from a relay that lost its peer) instead of waiting
   *  for good. Should the node come back, they run on there (ferry ps, ferry kill), unheard. */
  private lost(node: string, silentMs: number): void {
    for (const [pid, s] of this.sessions) {
      if (s.location !== node || s.exit) continue;
      const message = `node ${node}, where ${pid} ran, has been silent for ${Math.round(silentMs / 1000)} s: taken for lost (should it come back, ferry kill ${pid} ends it there)`;
      this.log?.(`${pid}: ${message}`);
      this.ended(pid, s.next, 1, { code: 'node-lost', message });
    }
  }

  private forward(pid: string, s: Session, offset: number, data: Buffer, eof: boolean): void {
    if (s.location === this.self) { this.stdinTarget(pid, offset, data, eof); return; }
    const where = s.location;
    this.membership.peer(where, { evenIfDown: true }).then((c) => c.send('HOME_INPUT', { pid, offset, ...(eof ? { eof: true } : {}) }, data))
      .catch((e: Error) => this.log?.(`stdin for ${pid} not delivered to ${where}: ${e.message} (resent when it attaches)`));
  }

  private deliver(pid: string, seq: number, fd: 1 | 2, data: Uint8Array): void {
    const s = this.sessions.get(pid);
    if (!s || seq < s.next) return;
    s.held.set(seq, { fd, data });
    this.drain(pid, s);
  }

  private ended(pid: string, seq: number, code: number, error?: { code: string; message: string }): void {
    const s = this.sessions.get(pid);
    if (!s) return;
    s.exit = { seq, code, error };
    this.drain(pid, s);
  }

  private drain(pid: string, s: Session): void {
    for (let w = s.held.get(s.next); w; w = s.held.get(s.next)) {
      s.held.delete(s.next++);
      s.client.output(w.fd, w.data);
    }
    if (s.exit && s.exit.seq <= s.next) {
      this.sessions.delete(pid);
      const where = ` on ${s.location}`;
      const e = s.exit.error;
      this.ends.set(pid, e?.code === 'killed' ? `been killed${where}` : e ? `failed${where} (${e.message})` : `ended${where} (exit code ${s.exit.code})`);
      if (this.ends.size > RECENT_ENDS) this.ends.delete(this.ends.keys().next().value!);
      this.listener?.ended(pid);
      s.client.exit(s.exit.code, s.exit.error);
    }
  }
}
