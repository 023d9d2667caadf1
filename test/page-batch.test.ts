// Page batches: the copying and the zero-copy encodings agree; a batch applied as it
// arrives (PageBatchWriter, a transport body sink, any chunking) writes the same memory
// as one decoded whole; malformed batches are refused before any page is written.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { applyPageBatch, decodePageBatch, encodePageBatch, encodePageBatchParts, isZeroPage, PageBatchWriter } from '../src/memory/page-batch.ts';
import { copyInto } from '../src/memory/copy.ts';
import { encodeFrame, FrameDecoder, resolveCode } from '../src/transport/index.ts';

const PS = 4096, PAGES = 64;

let seed = 0x9e3779b9;
const rnd = (n: number) => { seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0; return seed % n; };

/** Random indices with runs of consecutive pages, and a few zero pages not among them. */
function randomBatch(): { indices: number[]; zero: number[] } {
  const used = new Set<number>(), indices: number[] = [], zero: number[] = [];
  for (let r = rnd(5); r >= 0; r--) {
    const start = rnd(PAGES), len = 1 + rnd(8);
    for (let i = start; i < Math.min(PAGES, start + len); i++) if (!used.has(i)) { used.add(i); indices.push(i); }
  }
  for (let r = rnd(3); r > 0; r--) { const i = rnd(PAGES); if (!used.has(i)) { used.add(i); zero.push(i); } }
  return { indices, zero };
}

function chunked(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let o = 0; o < buf.length;) { const n = 1 + rnd(3 * PS); out.push(buf.subarray(o, o + n)); o += n; }
  return out;
}

describe('page batches', () => {
  it('zero-copy parts equal the copied encoding; streamed apply equals whole apply', () => {
    for (let t = 0; t < 200; t++) {
      const src = new Uint8Array(randomBytes(PAGES * PS));
      const { indices, zero } = randomBatch();
      const whole = encodePageBatch(src, PS, indices, zero);
      assert.deepEqual(Buffer.concat(encodePageBatchParts(src, PS, indices, zero)), whole);
      const a = new Uint8Array(randomBytes(PAGES * PS)), b = Uint8Array.from(a);
      applyPageBatch(decodePageBatch(whole, PS, PAGES), a, PS);
      const frame = encodeFrame(resolveCode('MIG_PAGES'), { mid: 'm' }, whole);
      const d = new FrameDecoder();
      d.sinkFor = (_info, _h, n) => new PageBatchWriter(b, PS, PAGES, n);
      const frames = chunked(frame).flatMap((c) => d.push(c));
      assert.equal(frames.length, 1);
      assert.equal(frames[0]!.body.length, 0);
      (frames[0]!.sunk as PageBatchWriter).end();
      assert.ok(Buffer.from(a).equals(Buffer.from(b)), `batch ${t}: streamed apply differs`);
    }
  });

  it('a malformed batch is refused before any page is written', () => {
    const src = new Uint8Array(randomBytes(4 * PS));
    const cases: [string, Buffer][] = [];
    const outside = encodePageBatch(new Uint8Array(PAGES * 2 * PS), PS, [1, PAGES + 3]);
    cases.push(['index outside', outside]);
    const short = encodePageBatch(src, PS, [0, 1]).subarray(0, 8 + 8 + PS);
    cases.push(['length', short]);
    for (const [what, body] of cases) {
      assert.throws(() => decodePageBatch(body, PS, PAGES), /malformed page batch/, what);
      const mem = new Uint8Array(PAGES * PS);
      const w = new PageBatchWriter(mem, PS, PAGES, body.length);
      for (const c of chunked(Buffer.from(body))) w.write(c);
      assert.throws(() => w.end(), /malformed page batch/, what);
      assert.ok(mem.every((x) => x === 0), `${what}: nothing written`);
    }
  });

  it('isZeroPage', () => {
    const m = new Uint8Array(8 * PS);
    m[3 * PS + 17] = 1;
    assert.deepEqual([...Array(8).keys()].filter((i) => !isZeroPage(m, i, PS)), [3]);
  });

  it('isZeroPage in a 4 GiB guest memory: any non-zero byte anywhere in a page, at any offset', () => {
    const mem = new Uint8Array(new WebAssembly.Memory({ initial: 65536, maximum: 65536, shared: true }).buffer);
    const last = mem.length / PS - 1; // past 2^31 bytes: offsets that 32-bit shifts get wrong
    const cases: [page: number, byte: number][] = [[0, 0], [1, 1], [2, PS / 2], [3, PS - 1], [600_000, 5], [last - 1, PS - 4], [last, PS - 1]];
    for (const [p] of cases) assert.equal(isZeroPage(mem, p, PS), true, `page ${p} before`);
    for (const [p, b] of cases) {
      mem[p * PS + b] = 7;
      assert.deepEqual(cases.map(([q]) => q).filter((q) => !isZeroPage(mem, q, PS)), [p], `byte ${b} of page ${p} set`);
      mem[p * PS + b] = 0;
    }
  });
});

describe('copyInto (copies into and out of a shared guest memory at any alignment)', () => {
  const shared = () => new Uint8Array(new WebAssembly.Memory({ initial: 3, maximum: 3, shared: true }).buffer);
  const data = new Uint8Array(randomBytes(150_000));
  // Lengths below, at and across the staging piece (64 KiB); every relative alignment mod 8.
  const lengths = [1, 511, 512, 4097, 65_536, 65_543, 140_000];

  it('into a shared memory equals TypedArray.set', () => {
    for (const n of lengths) for (let s = 0; s < 8; s++) for (let t = 0; t < 8; t++) {
      const got = shared(), want = new Uint8Array(got.length);
      const src = data.subarray(s, s + n);
      copyInto(got, 1000 + t, src);
      want.set(src, 1000 + t);
      assert.ok(Buffer.from(got).equals(Buffer.from(want)), `length ${n}, source offset ${s}, target offset ${t}`);
    }
  });

  it('out of a shared memory equals TypedArray.set', () => {
    const mem = shared();
    mem.set(data.subarray(0, mem.length - 50_000));
    for (const n of lengths) for (let s = 0; s < 8; s++) for (let t = 0; t < 8; t++) {
      const got = new Uint8Array(n + 16), want = new Uint8Array(n + 16);
      copyInto(got, t, mem.subarray(7 + s, 7 + s + n));
      want.set(mem.subarray(7 + s, 7 + s + n), t);
      assert.ok(Buffer.from(got).equals(Buffer.from(want)), `length ${n}, source offset ${s}, target offset ${t}`);
    }
  });
});
