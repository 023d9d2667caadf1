// When a migration's down time ends, as its source reckons it. The down time ends when the
// process runs again on the destination (thesis Fig. 2.1), which then answers the commit;
// the answer reaches the source later by its trip back (on this 2-vCPU machine's loopback
// 0.25-0.8 ms: the resumed guest takes a CPU that the answer's sender and receiver wait for).
//
// Nodes on one host read one monotonic clock (hostMs, vm/protocol.ts): there the
// destination's own reading of the instant is exact on the source too. A host is known by
// its Linux boot id. Elsewhere (other hosts, no boot id, or a reading that does not fall
// within the commit's round trip) the down time ends when the answer came, less how long
// the process had run by then on the destination (its own clock): the trip back counts.
import { readFileSync } from 'node:fs';
import type { DowntimeEnd } from '../migration/metrics.ts';
import { hostMs } from '../vm/protocol.ts';

let boot: string | null | undefined;

/** This host's boot id (Linux), null where there is none: then no instant is compared across nodes. */
export function bootId(): string | null {
  if (boot === undefined) {
    try { boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || null; } catch { boot = null; }
  }
  return boot;
}

/** What the destination's answer to the commit says of the instant the process ran again. */
export interface RanAgainAnswer { ranForMs?: unknown; ranAtHostMs?: unknown; boot?: unknown }

/** The answer's fields, on the destination: `ranAtHostMs` (hostMs) null if the process ended first. */
export function ranAgainAnswer(ranAtHostMs: number | null): RanAgainAnswer {
  if (ranAtHostMs === null) return { ranForMs: 0 };
  const b = bootId();
  return { ranForMs: Math.max(0, hostMs() - ranAtHostMs), ...(b !== null ? { ranAtHostMs, boot: b } : {}) };
}

/** What this node reads at the answer's arrival. */
export interface Here { boot: string | null; hostNow: number; now: number }

/** `sentAt` and `answeredAt`: the commit sent and its answer received (performance.now()). */
export function downtimeEnd(a: RanAgainAnswer, sentAt: number, answeredAt: number, here: Here = { boot: bootId(), hostNow: hostMs(), now: performance.now() }): DowntimeEnd {
  if (here.boot !== null && a.boot === here.boot && typeof a.ranAtHostMs === 'number' && Number.isFinite(a.ranAtHostMs)) {
    const at = here.now - (here.hostNow - a.ranAtHostMs);
    if (at >= sentAt && at <= answeredAt) return { at, by: 'host-clock' };
  }
  return { at: answeredAt - ranFor(a.ranForMs, answeredAt - sentAt), by: 'answer' };
}

/** The answer's `ranForMs` (how long the process had run on the destination when it
 *  answered), checked: a number within the commit's round trip, else 0 (an older peer, or
 *  nonsense: the down time then ends when the answer came, as it would without it). */
export function ranFor(v: unknown, roundTripMs: number): number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 ? Math.min(v, roundTripMs) : 0;
}
