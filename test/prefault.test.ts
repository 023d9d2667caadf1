// Pre-faulting a destination's memory (src/memory/prefault.ts): every method leaves the range
// zero-filled where a fresh memory is zero, stops where it was asked to, and stops early once
// the migration it serves is gone. (Its speed: bench/prefault.ts.)
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { prefault, type PrefaultMethod } from '../src/memory/prefault.ts';

const MiB = 1 << 20;
const CASES: { method: PrefaultMethod; zeroes: 'every byte' | 'a byte a page' }[] = [
  { method: 'both', zeroes: 'every byte' },
  { method: 'kernel', zeroes: 'every byte' },
  { method: 'touch', zeroes: 'a byte a page' },
];

describe('prefault', () => {
  for (const c of CASES) it(`${c.method}: writes ${c.zeroes} of the range, nothing past it`, async () => {
    const m = new Uint8Array(new SharedArrayBuffer(3 * MiB)).fill(7);
    const bytes = 2 * MiB + 4096 * 3 + 100; // not a whole number of pages or reads
    await prefault(m, bytes, () => true, c.method);
    const zeroed = m.subarray(0, bytes).reduce((n, b) => n + (b === 0 ? 1 : 0), 0);
    assert.equal(zeroed, c.zeroes === 'every byte' ? bytes : Math.ceil(bytes / 4096));
    assert.ok(m.subarray(bytes).every((b) => b === 7), 'past the range: untouched');
  });

  it('stops between steps once live() is false; a range past the memory ends at its end', async () => {
    const m = new Uint8Array(new SharedArrayBuffer(160 * MiB)).fill(7);
    let steps = 0;
    await prefault(m, m.length, () => steps++ < 1); // one 64 MiB step, then gone
    assert.equal(m[64 * MiB - 1], 0);
    assert.equal(m[64 * MiB], 7, 'the second step did not run');
    const small = new Uint8Array(new SharedArrayBuffer(MiB)).fill(7);
    await prefault(small, 10 * MiB);
    assert.ok(small.every((b) => b === 0));
  });
});
