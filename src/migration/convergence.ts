// When to stop iterating and freeze: small named predicates (as in QEMU's
// migration code), so each decision reads as a sentence and is testable alone.

export interface ConvergenceInput {
  /** Bytes still to send before the process may be frozen. */
  pending: number;
  rounds: number;
  maxRounds: number;
}

/** Nothing left to send while running. */
export const nothingPending = (c: ConvergenceInput): boolean => c.pending <= 0;

/** The round budget is spent (the thesis stopped pre-copy after 6 rounds). */
export const roundsExhausted = (c: ConvergenceInput): boolean => c.rounds >= c.maxRounds;

/** Another round while the process runs? */
export function shouldIterate(c: ConvergenceInput): boolean {
  return !nothingPending(c) && !roundsExhausted(c);
}
