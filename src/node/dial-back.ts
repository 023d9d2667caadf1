// A connection that a peer node dials to this one, on request: the way to get a
// connection on which the *peer* reads with one reused buffer (Node offers
// `onread` to sockets it dials only; socket-input.ts). A migration's source asks
// its destination for one, so the destination takes the page stream without a
// Buffer per read and the garbage collections they cause.
//
//   A -> B  DIAL_BACK {token}, on any connection between them   B: {} once it has dialled
//   B -> A  DIALED_BACK {token}, first frame on the new connection (A's server accepted it)
//
// B dials the address membership knows for A, never one named in the request,
// and only for a peer that is a node.
import { randomUUID } from 'node:crypto';
import { FerryError } from '../errors.ts';
import type { Connection, Message } from '../transport/index.ts';

const TIMEOUT_MS = 10_000;

export interface DialBackDeps {
  /** Any open connection to the node (to ask on). */
  peer(node: string): Promise<Connection>;
  /** A new connection from this node to the node. */
  dial(node: string): Promise<Connection>;
}

interface Waiting { resolve: (c: Connection) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }

export class DialBack {
  private readonly waiting = new Map<string, Waiting>();

  constructor(private readonly deps: DialBackDeps) {}

  /** A new connection that `node` dials to this node. */
  async from(node: string, timeoutMs = TIMEOUT_MS): Promise<Connection> {
    const token = randomUUID();
    const arrived = new Promise<Connection>((resolve, reject) => {
      const timer = setTimeout(() => this.settle(token, new FerryError('dial-back-timeout', `node ${node} did not dial back within ${timeoutMs} ms`)), timeoutMs);
      this.waiting.set(token, { resolve, reject, timer });
    });
    arrived.catch(() => {}); // rejected with the request's error below, or awaited
    try {
      const via = await this.deps.peer(node);
      await via.request('DIAL_BACK', { token }, undefined, { timeoutMs });
    } catch (e) {
      this.settle(token, e as Error);
    }
    return arrived;
  }

  install(conn: Connection): void {
    conn.handle('DIAL_BACK', this.onDialBack);
    conn.on('DIALED_BACK', this.onDialedBack);
  }

  private onDialBack = async (msg: Message, conn: Connection): Promise<{ header: Record<string, unknown> }> => {
    const token = msg.header.token;
    if (typeof token !== 'string' || token.length > 64) throw new FerryError('bad-request', 'DIAL_BACK: token must be a string of at most 64 characters');
    if (conn.peer.role !== 'node') throw new FerryError('forbidden', `DIAL_BACK: ${conn.label} is not a node`);
    const back = await this.deps.dial(conn.peer.node);
    try { await back.send('DIALED_BACK', { token }); } catch (e) { back.destroy(); throw e; }
    return { header: {} };
  };

  private onDialedBack = (msg: Message, conn: Connection): void => {
    const token = msg.header.token;
    if (typeof token === 'string' && this.waiting.has(token)) this.settle(token, conn);
    else conn.destroy(new FerryError('bad-request', `DIALED_BACK with a token not asked for (${String(token).slice(0, 64)})`)); // late (timed out) or never asked
  };

  private settle(token: string, outcome: Connection | Error): void {
    const w = this.waiting.get(token);
    if (!w) { if (!(outcome instanceof Error)) outcome.destroy(); return; }
    this.waiting.delete(token);
    clearTimeout(w.timer);
    if (outcome instanceof Error) w.reject(outcome); else w.resolve(outcome);
  }
}
