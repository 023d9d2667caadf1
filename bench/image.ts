// Process image encode/decode throughput on 256 MiB of guest memory.
// Run: npx tsx bench/image.ts [MiB]
// The memory is a view onto a 4 GiB shared wasm memory, as ferry's processes use.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { WasiState } from '../src/wasi/types.ts';
import { decodeImage, encodeImage, imageLength, readImageFile, writeImageFile } from '../src/image/index.ts';
import type { ProcessImageInput } from '../src/image/index.ts';

const MiB = 1 << 20;
const logicalBytes = Number(process.argv[2] ?? 256) * MiB;
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

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1]!;
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

const mem = shared4GiB();
for (let o = 0; o < logicalBytes; o += 64 * 1024) crypto.randomFillSync(mem.subarray(o, o + 64 * 1024));
measure('random', mem);
await fileRoundtrip(mem);

// mostly zero: 2% of 4 KiB pages hold random data, the rest are zero
mem.fill(0, 0, logicalBytes);
for (let p = 0; p < logicalBytes / 4096; p += 50) crypto.randomFillSync(mem.subarray(p * 4096, p * 4096 + 4096));
measure('mostly-zero (2% of pages non-zero)', mem);
