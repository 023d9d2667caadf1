// Every workload, frozen at many random points, through --hop-every and through
// checkpoint + restore in a new OS process: stdout, files and exit code identical to
// node:wasi's run of the same binary.
//
// Two test files run it side by side (test/migratable-*.test.ts), one per group of workloads:
//   calls:  programs that live in their system calls and their stack (getpid, recurse,
//           filecopy, sleeper);
//   memory: programs that live in their memory (rma, reference, pageinc, asobjects).
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { WORKLOADS } from '../helpers/workloads.ts';
import { checkpointChain, ferryRun, oracle, type Outcome } from '../helpers/modes.ts';

const RUNS = Number(process.env.FERRY_PROPERTY_RUNS ?? 2);

function same(actual: Outcome, expected: Outcome, what: string): void {
  assert.equal(actual.exitCode, expected.exitCode, `${what}: exit code (stderr: ${actual.stderr.slice(-500)})`);
  assert.equal(actual.stdout, expected.stdout, `${what}: stdout`);
  assert.deepEqual(actual.files, expected.files, `${what}: files`);
}

export const GROUPS = {
  calls: ['getpid', 'recurse', 'filecopy', 'sleeper', 'sleeper-echo'],
  memory: ['rma', 'reference', 'pageinc', 'asobjects'],
} as const;

export function migratableSuite(group: keyof typeof GROUPS): void {
  it('every workload is in a group', () => {
    const grouped = new Set<string>(Object.values(GROUPS).flat());
    assert.deepEqual(WORKLOADS.map((w) => w.name).filter((n) => !grouped.has(n)), []);
  });
  for (const w of WORKLOADS.filter((x) => (GROUPS[group] as readonly string[]).includes(x.name))) migratable(w);
}

function migratable(w: (typeof WORKLOADS)[number]): void {
  describe(w.name, () => {
    let expected: Outcome;
    before(async () => { expected = await oracle(w); assert.equal(expected.exitCode, 0, `oracle: ${expected.stderr}`); });

    it('runs under ferry exactly as under node:wasi', async () => {
      same(await ferryRun(w), expected, 'plain run');
    });

    it('hops (freeze, image, fresh worker and instance) at random intervals', async () => {
      await fc.assert(fc.asyncProperty(fc.integer({ min: 15, max: 250 }), async (ms) => {
        const got = await ferryRun(w, ['--verbose', '--hop-every', String(ms)]);
        same(got, expected, `--hop-every ${ms}`);
      }), { numRuns: RUNS, endOnFailure: true });
    });

    it('checkpoints and restores in new OS processes at random points', async () => {
      await fc.assert(fc.asyncProperty(fc.array(fc.integer({ min: 1, max: 600 }), { minLength: 1, maxLength: 3 }), async (delays) => {
        const got = await checkpointChain(w, delays);
        same(got, expected, `checkpoints after ${delays.join(', ')} ms`);
      }), { numRuns: RUNS, endOnFailure: true });
    });
  });
}
