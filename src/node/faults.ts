// Fault injection for tests and chaos runs: FERRY_FAULTS="point:action,..." in a
// node's environment makes it fail at a named point of the migration protocol,
// deterministically (a timing-based kill cannot hit a 1 ms window reliably).
//
//   points (where the node is when it fails)
//     dest-setup      destination, MIG_SETUP received
//     dest-pages      destination, first MIG_PAGES received
//     dest-state      destination, MIG_COMMIT (with the state) received
//     dest-commit     destination, state accepted, before the process runs
//     dest-running    destination, the process runs, before answering the commit (delay too:
//                     the answer comes late, the process runs meanwhile)
//     dest-answer-sent  destination, the commit's answer made (how long the process has run
//                     read), before it leaves (delay only: an answer slow on its way back)
//     src-pages       source, after its first page batch is sent
//     src-commit      source, right after sending MIG_COMMIT
//     src-push        source, after its first background-push batch (post-copy, post-processing)
//     dest-fault      destination, a remote page fault about to be sent to the page server
//     src-batch       source, its first page batch as it goes out (action corrupt only)
//     src-committed   source, the commit's answer received: post-processing (a push) begins after (delay only)
//     dest-answer     destination, the answer to its first remote page fault received (action delay only)
//   actions
//     crash           SIGKILL this node (kill -9 at exactly that point)
//     cut             destroy the connection the migration runs on (both ends see it drop)
//     corrupt         send the batch's body cut in half (compressed or not): a malformed batch
//     delay[=MS]      go on MS later (default 1000): with src-committed and dest-answer, what a link does
//                     when it delivers the push and MIG_DONE (one connection) before the answer to a
//                     fault (another connection) served before the push began
//     stall[=MS]      block this node's whole event loop for MS (default 1000), then go on: what
//                     a long synchronous task or a loaded machine does to its timers and heartbeats
//
// Each fault fires once. Unknown points or actions are refused at start-up.
import { FerryError } from '../errors.ts';
import type { Connection } from '../transport/index.ts';
import type { Log } from './log.ts';

export const FAULT_POINTS = ['dest-setup', 'dest-pages', 'dest-state', 'dest-commit', 'dest-running', 'src-pages', 'src-commit', 'src-push', 'dest-fault', 'src-batch', 'src-committed', 'dest-answer', 'dest-answer-sent'] as const;
export type FaultPoint = (typeof FAULT_POINTS)[number];
type Action = 'crash' | 'cut' | 'corrupt' | 'delay' | 'stall';
/** How long a delay or a stall holds unless given (=MS). */
const DELAY_MS = 1000;
/** Actions that go with some points only. */
const POINTS_OF: Partial<Record<Action, readonly FaultPoint[]>> = { corrupt: ['src-batch'], delay: ['src-committed', 'dest-answer', 'dest-running', 'dest-answer-sent'] };
/** Points that take one action only. */
const ACTION_OF: Partial<Record<FaultPoint, Action>> = { 'src-batch': 'corrupt', 'src-committed': 'delay', 'dest-answer': 'delay' };

export class Faults {
  private readonly armed = new Map<FaultPoint, { action: Action; ms?: number }>();

  constructor(spec: string | undefined, private readonly log?: Log) {
    for (const item of (spec ?? '').split(',').map((s) => s.trim()).filter(Boolean)) {
      const [point, how = ''] = item.split(':');
      const [action, ms] = how.split('=');
      if (!(FAULT_POINTS as readonly string[]).includes(point!)) throw new FerryError('bad-argument', `FERRY_FAULTS: unknown point '${point}' (known: ${FAULT_POINTS.join(', ')})`);
      if (action !== 'crash' && action !== 'cut' && action !== 'corrupt' && action !== 'delay' && action !== 'stall') throw new FerryError('bad-argument', `FERRY_FAULTS: unknown action '${how}' (crash, cut, corrupt, delay[=MS] or stall[=MS])`);
      const points = POINTS_OF[action], only = ACTION_OF[point as FaultPoint];
      if (points && !points.includes(point as FaultPoint)) throw new FerryError('bad-argument', `FERRY_FAULTS: ${item}: ${action} goes with ${points.join(' or ')} only`);
      if (only && only !== action) throw new FerryError('bad-argument', `FERRY_FAULTS: ${item}: ${point} takes ${only} only`);
      if (ms !== undefined && ((action !== 'delay' && action !== 'stall') || !/^\d{1,6}$/.test(ms)))
        throw new FerryError('bad-argument', `FERRY_FAULTS: ${item}: only delay and stall take =MS, a whole number of milliseconds`);
      this.armed.set(point as FaultPoint, { action, ...(ms !== undefined ? { ms: Number(ms) } : {}) });
    }
  }

  /** Whether a corrupt fault is armed at this point (the caller then makes a body of its own to damage). */
  corrupts(point: FaultPoint): boolean { return this.armed.get(point)?.action === 'corrupt'; }

  /** A batch to send: damaged if a corrupt fault is armed at this point (once). */
  corrupt(point: FaultPoint, body: Buffer): Buffer {
    if (this.armed.get(point)?.action !== 'corrupt') return body;
    this.armed.delete(point);
    this.log?.(`FAULT ${point}: corrupt`);
    return body.subarray(0, body.length >> 1);
  }

  /** Wait here if a delay is armed at this point (once). */
  async delay(point: FaultPoint): Promise<void> {
    const armed = this.armed.get(point);
    if (armed?.action !== 'delay') return;
    this.armed.delete(point);
    const ms = armed.ms ?? DELAY_MS;
    this.log?.(`FAULT ${point}: delay=${ms}`);
    await new Promise((r) => setTimeout(r, ms));
  }

  /** Fail here if a fault is armed at this point. Returns true if the connection was cut. */
  hit(point: FaultPoint, conn: Connection): boolean {
    const armed = this.armed.get(point), action = armed?.action;
    if (!action || action === 'delay') return false; // delay() holds it
    const ms = armed!.ms ?? DELAY_MS;
    this.armed.delete(point);
    this.log?.(`FAULT ${point}: ${action}${action === 'stall' ? `=${ms}` : ''}`);
    if (action === 'stall') {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms); // nothing else of this thread runs meanwhile
      return false;
    }
    if (action === 'crash') {
      this.log?.flush?.(); // SIGKILL runs no exit handler: the FAULT line must be out first
      process.kill(process.pid, 'SIGKILL');
    }
    conn.destroy(new FerryError('fault', `fault injected at ${point}`));
    return true;
  }
}
