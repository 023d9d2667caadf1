// The test workloads as data: one descriptor per program and arguments, run in many
// modes (plain, hops, checkpoint + restore) against node:wasi's run of the same binary.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, TEST_CACHE } from './ferry.ts';
import { prepareVariants } from '../../src/vm/cache.ts';
import { VARIANT_NAMES } from '../../src/vm/module-meta.ts';

export interface Workload {
  name: string;
  wasm: string;
  /** Guest arguments after argv[0]. */
  args: string[];
  /** Directories preopened as guest paths; host paths are relative to the run's directory. */
  dirs?: { host: string; guest: string }[];
  stdin?: Buffer;
  /** Writes the run's input files. */
  setup?: (dir: string) => void;
  /** Files the program writes (relative to the run's directory): compared too. */
  outputs?: string[];
}

const bin = (name: string) => join(ROOT, 'workloads', 'bin', `${name}.wasm`);

function deterministicBytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; b[i] = x & 0xff; }
  return b;
}

export const WORKLOADS: Workload[] = [
  { name: 'getpid', wasm: bin('getpid'), args: ['1000000'] }, // ~0.4 s under ferry: hops and checkpoints land mid-run
  { name: 'rma', wasm: bin('rma'), args: ['4', '60'] },
  { name: 'reference', wasm: bin('reference'), args: ['3000'] },
  { name: 'pageinc', wasm: bin('pageinc'), args: ['16', '3000'] },
  { name: 'recurse', wasm: bin('recurse'), args: ['5000', '6000'] },
  {
    name: 'filecopy', wasm: bin('filecopy'), args: ['/data/in.bin', '/data/out.bin', '4096', '16'],
    dirs: [{ host: 'data', guest: '/data' }],
    setup: (dir) => { writeFileSync(join(dir, 'data', 'in.bin'), deterministicBytes(3 << 20, 7)); },
    outputs: ['data/out.bin'],
  },
  { name: 'sleeper', wasm: bin('sleeper'), args: ['12', '40'] },
  {
    name: 'sleeper-echo', wasm: bin('sleeper'), args: ['--echo'],
    stdin: Buffer.from(Array.from({ length: 40 }, (_, i) => `line ${i} hello world ${'x'.repeat(i)}\n`).join('')),
  },
  { name: 'asobjects', wasm: bin('asobjects'), args: ['500'] },
];

/** The argument that sets how long each workload runs (writes, passes, rounds or work per chunk). */
const LENGTH_ARG: Record<string, number> = { getpid: 0, rma: 1, reference: 0, pageinc: 1, recurse: 1, filecopy: 3, sleeper: 0, asobjects: 0 };

/** `w` running about `k` times as long (for `outlasting`, test/helpers/modes.ts). */
export function longer(w: Workload, k: number): Workload {
  const i = LENGTH_ARG[w.name];
  if (i === undefined || w.args[i] === undefined) throw new Error(`longer: no length argument known for ${w.name} ${w.args.join(' ')}`);
  return { ...w, args: w.args.map((a, j) => (j === i ? String(Math.round(Number(a) * k)) : a)) };
}

export function readOutputs(w: Workload, dir: string): Record<string, Buffer> {
  return Object.fromEntries((w.outputs ?? []).map((f) => [f, readFileSync(join(dir, f))]));
}

/** Every variant of every workload in the suite's shared cache: a destination's first
 *  post-copy would otherwise transform the faulting variant while the program runs out. */
export async function prepareAllVariants(): Promise<void> {
  process.env.FERRY_CACHE_DIR = TEST_CACHE;
  for (const w of WORKLOADS) await prepareVariants(readFileSync(w.wasm), VARIANT_NAMES);
}
