// Section 3: process image encode and decode throughput.
// runImage: a running 256 MB RMA process, frozen, its capture encoded and decoded (the goal).
// runSyntheticImage: random and mostly-zero memory without a process (`npm run bench -- image-synthetic`,
// or directly: npx tsx bench/image.ts [MiB]); it also times the file round trip.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { WasiState } from '../src/wasi/types.ts';
import { decodeImage, encodeImage, imageLength, readImageFile, writeImageFile } from '../src/image/index.ts';
import type { ProcessImageInput } from '../src/image/index.ts';
import { imageFromCapture } from '../src/vm/snapshot.ts';
import { newGuestMemory } from '../src/vm/process.ts';
import { f1, median, sleep, startFerry, table } from './util.ts';

export const IMAGE_GOAL_MBS = 1000; // 1 GB/s, in MB/s (10^6 bytes)
const MB = 1e6, MiB = 1 << 20;

export interface ImageResult {
  logicalBytes: number;
  imageBytes: number;
  pages: { total: number; zero: number; stored: number; pageSize: number };
  encodeMs: number[];
  concatMs: number[];
  decodeMs: number[];
  applyFreshMs: number[];
  stopMs: number;
}

export const mbps = (bytes: number, ms: number): number => bytes / MB / (ms / 1000);

export async function runImage(reps = 3, mb = 256, touchMs = 3000): Promise<ImageResult> {
  console.log(`\n-- image encode/decode: rma ${mb} MB, frozen after ${touchMs} ms of random writes (${reps} reps, medians) --`);
  const run = await startFerry('rma', { args: [String(mb), '100000'] });
  await run.running;
  await sleep(touchMs);
  const cap = await run.proc.freeze();
  try {
    const input = imageFromCapture(cap, run.program, { pid: 'bench/1', node: 'bench', reason: 'checkpoint' });
    const r: ImageResult = {
      logicalBytes: cap.logicalBytes, imageBytes: 0, pages: { total: 0, zero: 0, stored: 0, pageSize: 0 },
      encodeMs: [], concatMs: [], decodeMs: [], applyFreshMs: [], stopMs: cap.stopMs,
    };
    for (let i = 0; i < reps; i++) {
      let t = performance.now();
      const chunks = encodeImage(input);
      r.encodeMs.push(performance.now() - t);
      t = performance.now();
      const buf = Buffer.concat(chunks);
      r.concatMs.push(performance.now() - t);
      r.imageBytes = imageLength(chunks);
      t = performance.now();
      const img = decodeImage(buf);
      r.decodeMs.push(performance.now() - t);
      const target = new Uint8Array(newGuestMemory().buffer); // fresh: first touch of its pages
      t = performance.now();
      img.memory.applyTo(target, { zeroFill: false });
      r.applyFreshMs.push(performance.now() - t);
      r.pages = { ...img.memory.counts, pageSize: img.memory.pageSize };
      if (i === 0 && Buffer.compare(Buffer.from(target.buffer, 0, cap.logicalBytes), Buffer.from(cap.memory.buffer, 0, cap.logicalBytes)) !== 0)
        throw new Error('applyTo did not reproduce the captured memory');
    }
    printImage(r);
    return r;
  } finally {
    await run.proc.kill();
  }
}

export function printImage(r: ImageResult): void {
  const L = r.logicalBytes;
  const row = (what: string, ms: number[], note = '') => {
    const rate = mbps(L, median(ms));
    return [what, f1(median(ms)), f1(rate), rate >= IMAGE_GOAL_MBS ? 'yes' : 'NO', note];
  };
  console.log(`logical memory ${(L / MiB).toFixed(1)} MiB; image ${(r.imageBytes / MiB).toFixed(1)} MiB; ` +
    `pages of ${r.pages.pageSize / 1024} KiB: ${r.pages.total} total, ${r.pages.stored} stored, ${r.pages.zero} zero (elided); stop ${r.stopMs.toFixed(3)} ms`);
  console.log(table(['step', 'median ms', 'MB/s (logical)', `>= ${IMAGE_GOAL_MBS} MB/s?`, 'note'], [
    row('encodeImage', r.encodeMs, 'chunks reference guest memory (no copy)'),
    row('decodeImage', r.decodeMs, 'includes checksum verification'),
    row('applyTo fresh', r.applyFreshMs, 'into a new 4 GiB shared memory'),
    ['Buffer.concat', f1(median(r.concatMs)), f1(mbps(L, median(r.concatMs))), '', 'setup for decode, not a goal'],
  ]));
}

// --- synthetic ---

let logicalBytes = 256 * MiB;
const RUNS = 5;

const wasi: WasiState = {
  version: 1, args: ['bench.wasm'], env: [], preopens: [], fds: {}, monotonicNs: '0',
  pendingDeadlineNs: null, stdinBuffered: '', stdinEof: false, exitCode: null,
};

// (tsconfig's lib has no WebAssembly typings)
const { WebAssembly: Wasm } = globalThis as unknown as {
  WebAssembly: { Memory: new (d: { initial: number; maximum: number; shared: boolean }) => { buffer: SharedArrayBuffer } };
};

function shared4GiB(): Uint8Array {
  const m = new Wasm.Memory({ initial: 65536, maximum: 65536, shared: true });
  return new Uint8Array(m.buffer);
}

function rate(bytes: number, ms: number): string {
  return `${((bytes / MiB) / (ms / 1000)).toFixed(0).padStart(6)} MB/s`;
}

function measure(label: string, mem: Uint8Array): void {
  const input: ProcessImageInput = {
    meta: { pid: 'bench/1', program: 'bench.wasm', node: 'bench', reason: 'checkpoint' },
    module: { sha256: '0'.repeat(64) },
    memory: { bytes: mem, logicalBytes },
    execution: { globals: [], asyncify: new Uint8Array(1024), asyncifyDataAddr: 0 },
    wasi,
  };
  const enc: number[] = [];
  const dec: number[] = [];
  const apply: number[] = [];
  let chunks: Buffer[] = [];
  for (let r = 0; r < RUNS; r++) {
    let t = performance.now();
    chunks = encodeImage(input);
    enc.push(performance.now() - t);
    const buf = Buffer.concat(chunks); // setup for decode, not measured
    t = performance.now();
    const img = decodeImage(buf);
    dec.push(performance.now() - t);
    const target = r === 0 ? shared4GiB() : mem; // first: a fresh memory (page faults); then: warm
    t = performance.now();
    img.memory.applyTo(target, { zeroFill: r !== 0 });
    apply.push(performance.now() - t);
  }
  const img = decodeImage(Buffer.concat(chunks));
  const c = img.memory.counts;
  console.log(`${label}: ${logicalBytes / MiB} MiB logical, ${c.stored}/${c.total} pages stored, image ${(imageLength(chunks) / MiB).toFixed(1)} MiB, ${chunks.length} chunks`);
  console.log(`  encode         median ${rate(logicalBytes, median(enc))}  best ${rate(logicalBytes, Math.min(...enc))}  (${median(enc).toFixed(1)} ms)`);
  console.log(`  decode         median ${rate(logicalBytes, median(dec))}  best ${rate(logicalBytes, Math.min(...dec))}  (${median(dec).toFixed(1)} ms)`);
  console.log(`  applyTo fresh  ${rate(logicalBytes, apply[0]!)}  (${apply[0]!.toFixed(1)} ms; first touch of a fresh 4 GiB memory)`);
  console.log(`  applyTo warm   median ${rate(logicalBytes, median(apply.slice(1)))}  (zero-filling elided pages)`);
}

async function fileRoundtrip(mem: Uint8Array): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-image-'));
  try {
    const file = path.join(dir, 'p.img');
    const input: ProcessImageInput = {
      meta: { pid: 'bench/1', program: 'bench.wasm', node: 'bench', reason: 'checkpoint' },
      module: { sha256: '0'.repeat(64) }, memory: { bytes: mem, logicalBytes },
      execution: { globals: [], asyncify: new Uint8Array(0), asyncifyDataAddr: 0 }, wasi,
    };
    let t = performance.now();
    await writeImageFile(file, input);
    const w = performance.now() - t;
    t = performance.now();
    await readImageFile(file);
    const r = performance.now() - t;
    console.log(`file (${dir}, disk-bound): writeImageFile incl. fsync ${rate(logicalBytes, w)}, readImageFile ${rate(logicalBytes, r)}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The synthetic bench: random and mostly-zero memory, no process. */
export async function runSyntheticImage(mib = 256): Promise<void> {
  logicalBytes = mib * MiB;
  console.log(`\n-- image, synthetic ${mib} MiB (no process) --`);
  const mem = shared4GiB();
  for (let o = 0; o < logicalBytes; o += 64 * 1024) crypto.randomFillSync(mem.subarray(o, o + 64 * 1024));
  measure('random', mem);
  await fileRoundtrip(mem);

  // mostly zero: 2% of 4 KiB pages hold random data, the rest are zero
  mem.fill(0, 0, logicalBytes);
  for (let p = 0; p < logicalBytes / 4096; p += 50) crypto.randomFillSync(mem.subarray(p * 4096, p * 4096 + 4096));
  measure('mostly-zero (2% of pages non-zero)', mem);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await runSyntheticImage(Number(process.argv[2] ?? 256));
