// When to stop iterating and freeze: small named predicates (as in QEMU's
// migration code), so each decision reads as a sentence and is testable alone.

export interface ConvergenceInput {
  /** Bytes still to send before the process may be frozen. */
  pending: number;
  rounds: number;
  maxRounds: number;
  /** What may be left for down time, in bytes (see downtimeBudget); 0 if absent. */
  limitBytes?: number;
  /** What was pending before the last round, for a strategy that gauges its working set
   *  (queued pre-copy); undefined for the others and before the first round. */
  previousPending?: number;
}

/** Nothing left to send while running. */
export const nothingPending = (c: ConvergenceInput): boolean => c.pending <= 0;

/** What is left fits in the down-time budget. */
export const fitsDowntime = (c: ConvergenceInput): boolean => c.rounds > 0 && c.pending <= (c.limitBytes ?? 0);

/** The round budget is spent (the thesis stopped pre-copy after 6 rounds). */
export const roundsExhausted = (c: ConvergenceInput): boolean => c.rounds >= c.maxRounds;

/** A round that takes less than this share off what it found pending has not converged. */
export const STALL_SHRINK = 0.1;

/** The working set stopped shrinking: the last round took less than a tenth off what it
 *  found pending (queued pre-copy gauges W so, thesis 2.3.6 step 6). Its pages are written
 *  faster than they settle: more rounds would only wait, and send the same pages at the freeze. */
export const stalled = (c: ConvergenceInput): boolean =>
  c.previousPending !== undefined && c.pending > c.previousPending * (1 - STALL_SHRINK);

/** Why the rounds end (the first predicate that holds), or null: another round. */
export type RoundsEnd = 'nothing-pending' | 'fits-downtime' | 'rounds-exhausted' | 'stalled';
export function roundsEnd(c: ConvergenceInput): RoundsEnd | null {
  if (nothingPending(c)) return 'nothing-pending';
  if (fitsDowntime(c)) return 'fits-downtime';
  if (roundsExhausted(c)) return 'rounds-exhausted';
  if (stalled(c)) return 'stalled';
  return null;
}

/** --postcopy-after-rounds N: the rounds are over (N of them, the round budget ran out
 *  first, or the working set stalled) and what is left still does not fit the down time:
 *  post-copy takes over. */
export function switchesToPostCopy(c: ConvergenceInput & { postcopyAfterRounds?: number }): boolean {
  if (c.postcopyAfterRounds === undefined) return false;
  return !nothingPending(c) && !fitsDowntime(c) && (c.rounds >= Math.min(c.postcopyAfterRounds, c.maxRounds) || stalled(c));
}

export interface BudgetInput {
  /** --downtime-limit, ms. */
  downtimeLimitMs: number;
  /** Bytes/s the link moved in the last round (or its shaped rate); null before any round. */
  bandwidthBytesPerSec: number | null;
  addressSpaceBytes: number;
  /** The thesis's rule instead: stop when the dirty set is under 30% of the address space. */
  thesisLimits: boolean;
}

export const THESIS_DIRTY_FRACTION = 0.3;

/** Bytes that may be left for down time. */
export function downtimeBudget(b: BudgetInput): number {
  if (b.thesisLimits) return THESIS_DIRTY_FRACTION * b.addressSpaceBytes;
  if (b.bandwidthBytesPerSec === null) return 0;
  return (b.downtimeLimitMs / 1000) * b.bandwidthBytesPerSec;
}

/** Auto-converge (QEMU): slow the process down while it dirties memory faster than the link drains it. */
export function throttleFor(dirtyRateBytesPerSec: number, bandwidthBytesPerSec: number, current: number): number {
  if (dirtyRateBytesPerSec <= bandwidthBytesPerSec * 0.5) return Math.max(0, current - 0.1);
  return Math.min(0.99, current === 0 ? 0.2 : current + 0.1);
}
