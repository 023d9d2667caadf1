// The convergence predicates alone (convergence.ts): which one ends the rounds, in
// the order the engine asks them, and when a stuck pre-copy switches to post-copy.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { downtimeBudget, roundsEnd, switchesToPostCopy, type ConvergenceInput } from '../src/migration/convergence.ts';

const MB = 1 << 20;
const cases: { name: string; c: ConvergenceInput; end: ReturnType<typeof roundsEnd> }[] = [
  { name: 'nothing left to send', c: { pending: 0, rounds: 3, maxRounds: 6 }, end: 'nothing-pending' },
  { name: 'what is left fits the down-time budget', c: { pending: MB, rounds: 1, maxRounds: 6, limitBytes: 2 * MB }, end: 'fits-downtime' },
  { name: 'a budget is not judged before the first round', c: { pending: MB, rounds: 0, maxRounds: 6, limitBytes: 2 * MB }, end: null },
  { name: 'the round budget is spent', c: { pending: 4 * MB, rounds: 6, maxRounds: 6, limitBytes: MB }, end: 'rounds-exhausted' },
  { name: 'the working set did not shrink in the last round', c: { pending: 4 * MB, rounds: 1, maxRounds: 6, previousPending: 4 * MB }, end: 'stalled' },
  { name: 'the working set grew', c: { pending: 5 * MB, rounds: 2, maxRounds: 6, previousPending: 4 * MB }, end: 'stalled' },
  { name: 'the working set shrank by a tenth or less', c: { pending: 3.7 * MB, rounds: 1, maxRounds: 6, previousPending: 4 * MB }, end: 'stalled' },
  { name: 'the working set shrank by more than a tenth: another round', c: { pending: 3 * MB, rounds: 1, maxRounds: 6, previousPending: 4 * MB }, end: null },
  { name: 'no gauge (pre-copy): rounds go on while pending stays', c: { pending: 4 * MB, rounds: 1, maxRounds: 6 }, end: null },
  { name: 'fitting wins over stalling', c: { pending: MB, rounds: 2, maxRounds: 6, limitBytes: 2 * MB, previousPending: MB }, end: 'fits-downtime' },
];

describe('convergence predicates', () => {
  for (const k of cases) it(`${k.name}: ${k.end ?? 'another round'}`, () => assert.equal(roundsEnd(k.c), k.end));

  it('--postcopy-after-rounds switches after N rounds, or once the working set stalls, never when it fits', () => {
    const base = { pending: 4 * MB, maxRounds: 6, limitBytes: MB, postcopyAfterRounds: 3 };
    assert.equal(switchesToPostCopy({ ...base, rounds: 2 }), false);
    assert.equal(switchesToPostCopy({ ...base, rounds: 3 }), true);
    assert.equal(switchesToPostCopy({ ...base, rounds: 1, previousPending: 4 * MB }), true);
    assert.equal(switchesToPostCopy({ ...base, rounds: 3, pending: MB / 2 }), false);
    assert.equal(switchesToPostCopy({ ...base, rounds: 6, postcopyAfterRounds: undefined }), false);
  });

  it('the down-time budget: limit x bandwidth, or the thesis\'s 30% of the address space', () => {
    assert.equal(downtimeBudget({ downtimeLimitMs: 300, bandwidthBytesPerSec: 10 * MB, addressSpaceBytes: 64 * MB, thesisLimits: false }), 3 * MB);
    assert.equal(downtimeBudget({ downtimeLimitMs: 300, bandwidthBytesPerSec: null, addressSpaceBytes: 64 * MB, thesisLimits: false }), 0);
    assert.equal(downtimeBudget({ downtimeLimitMs: 300, bandwidthBytesPerSec: 10 * MB, addressSpaceBytes: 10 * MB, thesisLimits: true }), 3 * MB);
  });
});
