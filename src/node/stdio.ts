// A process's stdio, carried between its home node and the terminal that ran
// `ferry run` (wherever they are). Between the home node and the node the
// process runs on now, home.ts carries it.
//
// Each `ferry run` picks a session id. The home node sends the process's
// output as PROC_OUTPUT {session, pid, fd} frames, then PROC_EXIT {session,
// pid, code, error?}, on the connection the run request came in on; the
// client sends stdin as PROC_INPUT {session, eof?}. All of these are bulk
// frames on one connection, which the transport delivers in order, so stdout
// and stderr keep their interleaving and the exit comes after the last byte.
//
// When the client reached the cluster through another node, that node relays:
// it registered the session before forwarding the run request, so output that
// arrives before the run reply is routed too, and it passes frames through in
// order, both ways. A relay whose peer connection dies ends the client's run
// with an error; a client that goes away closes the process's stdin.
import type { Connection, Message } from '../transport/index.ts';
import type { ClientSink } from './home.ts';

/** Where a client's stdin for a process goes (the home router). */
export type InputTarget = (pid: string, data: Uint8Array | undefined, eof: boolean) => void;

interface Relay { client: Connection; peer: Connection; unsubscribe: (() => void)[] }

export class StdioRouter {
  /** Sessions of processes running here: session -> pid. */
  private readonly local = new Map<string, string>();
  /** Sessions this node relays: session -> client and peer connections. */
  private readonly relays = new Map<string, Relay>();

  constructor(private readonly input: InputTarget, private readonly log?: (m: string) => void) {}

  /** A sink sending a process's output and exit to the connection that ran it. */
  sinkFor(conn: Connection, session: string, pid: string): ClientSink {
    let warned = false;
    const lost = (e: unknown) => {
      if (!warned) this.log?.(`output of session ${session} is lost: ${(e as Error).message}`);
      warned = true;
    };
    return {
      output: (fd, data) => {
        if (conn.isOpen) conn.send('PROC_OUTPUT', { session, pid, fd }, data).catch(lost);
      },
      exit: (code, error) => {
        this.local.delete(session);
        if (conn.isOpen) conn.send('PROC_EXIT', { session, pid, code, ...(error ? { error } : {}) }).catch(lost);
      },
    };
  }

  /** The process of a session started here: stdin from its client goes to it. */
  bindLocal(conn: Connection, session: string, pid: string): void {
    this.local.set(session, pid);
    const off = conn.onClose(() => {
      if (this.local.get(session) === pid) { this.local.delete(session); this.input(pid, undefined, true); }
    });
    void off;
  }

  /** Relay a session between a client and the peer that runs its process. Call before forwarding the run request. */
  addRelay(session: string, client: Connection, peer: Connection): void {
    const r: Relay = { client, peer, unsubscribe: [] };
    r.unsubscribe.push(client.onClose(() => {
      if (this.relays.get(session) !== r) return;
      if (peer.isOpen) peer.send('PROC_INPUT', { session, eof: true }).catch(() => {});
      this.dropRelay(session);
    }));
    r.unsubscribe.push(peer.onClose(() => {
      if (this.relays.get(session) !== r) return;
      if (client.isOpen) client.send('PROC_EXIT', { session, code: 1, error: { code: 'node-lost', message: `lost the connection to ${peer.peer.node}, where the process ran` } }).catch(() => {});
      this.dropRelay(session);
    }));
    this.relays.set(session, r);
  }

  dropRelay(session: string): void {
    const r = this.relays.get(session);
    if (!r) return;
    this.relays.delete(session);
    for (const f of r.unsubscribe) f();
  }

  /** PROC_OUTPUT from a peer: pass it on to the client. */
  onOutput = (msg: Message, from: Connection): void => {
    const r = this.relayOf(msg, from, 'peer');
    if (r?.client.isOpen) r.client.send('PROC_OUTPUT', msg.header, msg.body).catch(() => {});
  };

  /** PROC_EXIT from a peer: pass it on and forget the session. */
  onExit = (msg: Message, from: Connection): void => {
    const r = this.relayOf(msg, from, 'peer');
    if (!r) return;
    if (r.client.isOpen) r.client.send('PROC_EXIT', msg.header).catch(() => {});
    this.dropRelay(msg.header.session as string);
  };

  /** PROC_INPUT from a client (or from a relaying node): to the process, or on to its node. */
  onInput = (msg: Message, from: Connection): void => {
    const session = msg.header.session;
    if (typeof session !== 'string') return;
    const eof = msg.header.eof === true;
    const pid = this.local.get(session);
    if (pid !== undefined) {
      this.input(pid, msg.body, eof);
      if (eof) this.local.delete(session);
      return;
    }
    const r = this.relayOf(msg, from, 'client');
    if (r?.peer.isOpen) r.peer.send('PROC_INPUT', msg.header, msg.body).catch(() => {});
  };

  private relayOf(msg: Message, from: Connection, side: 'client' | 'peer'): Relay | undefined {
    const session = msg.header.session;
    if (typeof session !== 'string') return undefined;
    const r = this.relays.get(session);
    return r && r[side] === from ? r : undefined;
  }
}
