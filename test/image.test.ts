import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import fc from 'fast-check';
import type { WasiState } from '../src/wasi/types.ts';
import {
  ImageError, MemoryImage, decodeImage, encodeImage, formatSummary, globalBits, globalValueToString,
  parseGlobalValue, readImageFile, summarizeImage, writeImageFile,
} from '../src/image/index.ts';
import type { GlobalValue, ProcessImageInput } from '../src/image/index.ts';

const concat = (chunks: Uint8Array[]) => Buffer.concat(chunks);

function wasiState(extra: Partial<WasiState> = {}): WasiState {
  return {
    version: 1,
    args: ['prog.wasm', '--flag', 'x y'],
    env: ['HOME=/home/u', 'LANG=C'],
    preopens: [{ host: '/tmp/data', guest: '/data' }],
    fds: {
      0: { kind: 'stdin', offset: 0, fdflags: 0, read: true, write: false, rightsBase: '0', rightsInheriting: '0' },
      1: { kind: 'stdout', offset: 0, fdflags: 0, read: false, write: true, rightsBase: '0', rightsInheriting: '0' },
      3: { kind: 'directory', hostPath: '/tmp/data', preopen: '/data', offset: 0, fdflags: 0, read: true, write: true, rightsBase: '18446744073709551615', rightsInheriting: '18446744073709551615' },
      4: { kind: 'file', hostPath: '/tmp/data/out.txt', guestPath: '/data/out.txt', offset: 12345, fdflags: 1, read: false, write: true, rightsBase: '64', rightsInheriting: '0' },
    },
    monotonicNs: '123456789012',
    pendingDeadlineNs: null,
    stdinBuffered: Buffer.from('hello').toString('base64'),
    stdinEof: false,
    exitCode: null,
    ...extra,
  };
}

const MODULE = Buffer.from('\0asm\x01\0\0\0 pretend module bytes', 'latin1');

/** A small image: 64 KiB logical memory (16 pages of 4 KiB), 3 stored. */
function smallInput(over: Partial<ProcessImageInput> = {}): { input: ProcessImageInput; mem: Uint8Array } {
  const mem = new Uint8Array(new SharedArrayBuffer(131072));
  mem[0] = 1; mem.fill(7, 5 * 4096, 6 * 4096); mem[15 * 4096 + 4095] = 9;
  mem[70000] = 5; // past logicalBytes: not captured
  const input: ProcessImageInput = {
    meta: { pid: 'nodeA/1', program: 'workloads/x.wasm', node: 'nodeA', reason: 'checkpoint', createdAt: '2024-01-02T03:04:05.000Z', ferryVersion: '0.1.0', extra: { note: 'x' } },
    module: { bytes: MODULE, embedded: true, path: '/abs/workloads/x.wasm' },
    memory: { bytes: mem, logicalBytes: 65536 },
    execution: {
      globals: [{ name: '__stack_pointer', type: 'i32', value: '65536' }, { name: 'g', type: 'f64', value: '0x7ff8000000000001' }],
      asyncify: Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]),
      asyncifyDataAddr: 0xfff00000,
    },
    wasi: wasiState(),
    ...over,
  };
  return { input, mem };
}

function expectImageError(fn: () => unknown, code?: string, re?: RegExp): ImageError {
  try { fn(); } catch (e) {
    assert.ok(e instanceof ImageError, `expected ImageError, got ${String(e)}`);
    assert.equal(e.name, 'ImageError');
    if (code) assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    assert.ok(!e.message.includes('\n'), 'one line');
    return e;
  }
  assert.fail('expected an ImageError, decode succeeded');
}

/** Walk the sections of an encoded image: [type, headerOffset, payloadOffset, length]. */
function walk(buf: Buffer): { type: number; h: number; p: number; len: number }[] {
  const out = [];
  const n = buf.readUInt32LE(12);
  let off = 16;
  for (let i = 0; i < n; i++) {
    const len = Number(buf.readBigUInt64LE(off + 8));
    out.push({ type: buf.readUInt16LE(off), h: off, p: off + 20, len });
    off += 20 + len;
  }
  return out;
}

/** Recompute the table crc in END after patching a header (simulates a well-formed file from another writer). */
function resealTable(buf: Buffer): void {
  const secs = walk(buf);
  const end = secs[secs.length - 1]!;
  let crc = zlib.crc32(buf.subarray(0, 16));
  for (const s of secs) crc = zlib.crc32(buf.subarray(s.h, s.h + (s === end ? 16 : 20)), crc);
  buf.writeUInt32LE(crc >>> 0, end.p + 8);
  buf.writeUInt32LE(zlib.crc32(buf.subarray(end.p, end.p + 12)) >>> 0, end.h + 16);
}

test('small image roundtrip, re-encode is byte-identical, summary', () => {
  const { input, mem } = smallInput();
  const buf = concat(encodeImage(input));
  assert.equal(buf.subarray(0, 8).toString('latin1'), 'FERRYIMG');
  const img = decodeImage(buf);
  assert.equal(img.meta.pid, 'nodeA/1');
  assert.equal(img.meta.pageSize, 4096);
  assert.equal(img.module.sha256, crypto.createHash('sha256').update(MODULE).digest('hex'));
  assert.ok(img.module.embedded);
  assert.deepEqual(Buffer.from(img.module.bytes!), MODULE);
  assert.deepEqual(img.memory.counts, { total: 16, zero: 13, stored: 3 });
  assert.deepEqual(img.memory.toBytes(), mem.slice(0, 65536));
  assert.equal(img.memory.page(1), null);
  assert.equal(img.memory.page(5)![0], 7);
  assert.equal(img.memory.page(15)![4095], 9);
  assert.deepEqual([...img.memory.pages()].map((p) => p.index), [0, 5, 15]);
  assert.deepEqual(img.wasi, input.wasi);
  assert.deepEqual(Buffer.from(img.execution.asyncify), Buffer.from(input.execution.asyncify));
  assert.equal(img.execution.asyncifyDataAddr, 0xfff00000);

  // applyTo onto dirty memory zero-fills elided pages
  const target = new Uint8Array(1 << 17).fill(0xee);
  img.memory.applyTo(target);
  assert.deepEqual(target.subarray(0, 65536), mem.subarray(0, 65536));
  assert.equal(target[65536], 0xee);

  const again = concat(encodeImage(img));
  assert.ok(again.equals(buf), 're-encoding a decoded image gives the same bytes');

  const s = summarizeImage(img);
  assert.deepEqual(s.memory.pages, { total: 16, zero: 13, stored: 3 });
  assert.equal(s.wasi.fds.find((f) => f.fd === 4)!.offset, 12345);
  const text = formatSummary(s);
  assert.match(text, /\/data\/out\.txt/);
  assert.match(text, /offset 12345/);
  assert.match(text, /3 stored/);
  JSON.stringify(s);
});

test('module not embedded: decoder reports it, restorer finds it by hash', () => {
  const sha = 'ab'.repeat(32);
  const { input } = smallInput({ module: { sha256: sha, path: '/x.wasm', size: 99 } });
  const img = decodeImage(concat(encodeImage(input)));
  assert.equal(img.module.embedded, false);
  assert.equal(img.module.bytes, null);
  assert.equal(img.module.sha256, sha);
  assert.equal(img.module.size, 99);
});

test('encoder rejects bad input', () => {
  const { input, mem } = smallInput();
  expectImageError(() => encodeImage({ ...input, memory: { bytes: mem, logicalBytes: 4096 } }), 'invalid-input');
  expectImageError(() => encodeImage({ ...input, memory: { bytes: mem, logicalBytes: 1 << 18 } }), 'invalid-input');
  expectImageError(() => encodeImage({ ...input, meta: { ...input.meta, pageSize: 8192 } }), 'invalid-input');
  expectImageError(() => encodeImage({ ...input, module: { bytes: MODULE, sha256: '00'.repeat(32) } }), 'invalid-input');
  expectImageError(() => encodeImage({ ...input, execution: { ...input.execution, globals: [{ name: 'x', type: 'i32', value: '4294967296' }] } }), 'invalid-input');
  expectImageError(() => encodeImage({ ...input, execution: { ...input.execution, globals: [{ name: 'x', type: 'f32', value: '1.5' }] } }), 'invalid-input');
});

// ---- property: roundtrip ----

const I64_EXTREMES = [0n, 1n, -1n, 2n ** 63n - 1n, -(2n ** 63n), 2n ** 64n - 1n];
const NAN_BITS_F32 = [0x7fc00000, 0x7fc00001, 0xffc00000, 0x7f800001, 0x80000000, 0x7f800000];
const NAN_BITS_F64 = [0x7ff8000000000000n, 0x7ff8000000000001n, 0xfff0000000000001n, 0x8000000000000000n];

const globalArb: fc.Arbitrary<GlobalValue> = fc.oneof(
  fc.record({ name: fc.string(), type: fc.constant('i32' as const), value: fc.oneof(fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), fc.integer({ min: 0, max: 2 ** 32 - 1 })).map(String) }, { noNullPrototype: true }),
  fc.record({ name: fc.string(), type: fc.constant('i64' as const), value: fc.oneof(fc.constantFrom(...I64_EXTREMES), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n })).map(String) }, { noNullPrototype: true }),
  fc.record({ name: fc.string(), type: fc.constant('f32' as const), value: fc.oneof(fc.constantFrom(...NAN_BITS_F32), fc.integer({ min: 0, max: 2 ** 32 - 1 })).map((b) => globalValueToString('f32', b, { bits: true })) }, { noNullPrototype: true }),
  fc.record({ name: fc.string(), type: fc.constant('f64' as const), value: fc.oneof(fc.constantFrom(...NAN_BITS_F64), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })).map((b) => globalValueToString('f64', b, { bits: true })) }, { noNullPrototype: true }),
);

test('property: encode/decode roundtrip (random memories, zero pages, page sizes, globals)', () => {
  fc.assert(fc.property(
    fc.constantFrom(4096, 16384, 65536),
    fc.integer({ min: 0, max: 3 }), // wasm pages
    fc.array(fc.constantFrom('zero', 'random', 'onebyte', 'lastbyte'), { minLength: 64, maxLength: 64 }),
    fc.integer(),
    fc.array(globalArb, { maxLength: 8 }),
    fc.uint8Array({ maxLength: 300 }),
    fc.boolean(),
    fc.dictionary(fc.string(), fc.oneof(fc.string(), fc.integer(), fc.boolean()), { noNullPrototype: true }),
    (pageSize, wasmPages, kinds, seed, globals, asyncify, embed, extra) => {
      const logicalBytes = wasmPages * 65536;
      const mem = new Uint8Array(new SharedArrayBuffer(logicalBytes + 65536));
      const rnd = crypto.createHash('sha256').update(String(seed)).digest();
      const nPages = logicalBytes / pageSize;
      let expectedStored = 0;
      for (let i = 0; i < nPages; i++) {
        const kind = kinds[i % kinds.length]!;
        const page = mem.subarray(i * pageSize, (i + 1) * pageSize);
        if (kind === 'random') { crypto.randomFillSync(page); page[0] = 1; expectedStored++; }
        else if (kind === 'onebyte') { page[rnd[i % 32]! * 7 % pageSize] = rnd[(i + 1) % 32]! | 1; expectedStored++; }
        else if (kind === 'lastbyte') { page[pageSize - 1] = 0x80; expectedStored++; }
      }
      mem.fill(0xaa, logicalBytes); // beyond the logical size: never captured
      const input: ProcessImageInput = {
        meta: { pid: 'n/7', program: 'p.wasm', node: 'n', reason: 'migration', pageSize, extra },
        module: { bytes: MODULE, embedded: embed },
        memory: { bytes: mem, logicalBytes },
        execution: { globals, asyncify, asyncifyDataAddr: 1234, extra: { k: 1 } },
        wasi: wasiState({ args: ['p', ...Object.keys(extra)] }),
      };
      const buf = concat(encodeImage(input));
      const img = decodeImage(buf);
      assert.equal(img.meta.pageSize, pageSize);
      assert.deepEqual(img.meta.extra, extra);
      assert.deepEqual(img.memory.counts, { total: nPages, zero: nPages - expectedStored, stored: expectedStored });
      assert.equal(img.memory.logicalBytes, logicalBytes);
      assert.ok(Buffer.from(img.memory.toBytes()).equals(Buffer.from(mem.buffer, 0, logicalBytes)));
      const target = new Uint8Array(logicalBytes).fill(3);
      img.memory.applyTo(target);
      assert.ok(Buffer.from(target).equals(Buffer.from(mem.buffer, 0, logicalBytes)));
      assert.deepEqual(img.execution.globals, globals);
      for (let i = 0; i < globals.length; i++) {
        assert.equal(globalBits(img.execution.globals[i]!), globalBits(globals[i]!));
        parseGlobalValue(img.execution.globals[i]!);
      }
      assert.deepEqual(Buffer.from(img.execution.asyncify), Buffer.from(asyncify));
      assert.equal(img.module.embedded, embed);
      assert.deepEqual(img.wasi, input.wasi);
      assert.ok(concat(encodeImage(img)).equals(buf));
    },
  ), { numRuns: 60 });
});

test('global value helpers are exact', () => {
  assert.equal(globalValueToString('i64', -(2n ** 63n)), '-9223372036854775808');
  assert.equal(globalValueToString('i32', 0xffffffff), '-1');
  assert.equal(globalValueToString('f64', -0), '0x8000000000000000');
  assert.equal(globalValueToString('f32', 1.5), '0x3fc00000');
  assert.equal(parseGlobalValue({ name: 'x', type: 'f32', value: '0x3fc00000' }), 1.5);
  assert.ok(Number.isNaN(parseGlobalValue({ name: 'x', type: 'f64', value: '0x7ff8000000000001' })));
  assert.equal(globalBits({ name: 'x', type: 'f64', value: '0x7ff8000000000001' }), 0x7ff8000000000001n);
  assert.equal(parseGlobalValue({ name: 'x', type: 'i64', value: '18446744073709551615' }), -1n);
});

// ---- damage ----

test('truncation at every offset is reported as truncated', () => {
  const buf = concat(encodeImage(smallInput().input));
  for (let n = 0; n < buf.length; n++) {
    expectImageError(() => decodeImage(buf.subarray(0, n)), 'truncated', /is truncated/);
  }
  const e = expectImageError(() => decodeImage(buf.subarray(0, buf.length - 1000), { source: '/x.img' }), 'truncated');
  assert.match(e.message, /^image \/x\.img is truncated: section \d+ \(memory\) needs \d+ bytes, \d+ remain$/);
});

test('single-byte corruption anywhere is an ImageError, never a silent decode', () => {
  const buf = concat(encodeImage(smallInput().input));
  const secs = walk(buf);
  const rnd = crypto.randomBytes(buf.length);
  const codes = new Map<string, number>();
  for (let i = 0; i < buf.length; i++) {
    const bad = Buffer.from(buf);
    bad[i] ^= rnd[i]! || 0x40;
    const e = expectImageError(() => decodeImage(bad));
    codes.set(e.code, (codes.get(e.code) ?? 0) + 1);
    const inPayload = secs.some((s) => i >= s.p && i < s.p + s.len);
    if (inPayload) assert.equal(e.code, 'checksum', `byte ${i}: ${e.message}`);
  }
  assert.ok((codes.get('checksum') ?? 0) > buf.length * 0.9, JSON.stringify([...codes]));
  const mem = secs.find((s) => s.type === 3)!;
  const bad = Buffer.from(buf);
  bad[mem.p + mem.len - 1] ^= 1;
  expectImageError(() => decodeImage(bad), 'checksum', /^image checksum mismatch in section \d+ \(memory\)$/);
});

test('wrong magic', () => {
  const buf = concat(encodeImage(smallInput().input));
  buf.write('NOTANIMG', 0, 'latin1');
  expectImageError(() => decodeImage(buf), 'bad-magic', /not a ferry process image/);
  expectImageError(() => decodeImage(Buffer.from('\x7fELF')), 'bad-magic', /it begins 0x7f454c46; an image begins "FERRYIMG"/);
  expectImageError(() => decodeImage(Buffer.from('#!/bin/sh\n')), 'bad-magic', /it begins "#!\/bin\/s"; an image/);
  expectImageError(() => decodeImage(Buffer.from('hello\n')), 'bad-magic', /it begins "hello\\n"; an image/);
});

test('newer format version is refused', () => {
  const buf = concat(encodeImage(smallInput().input));
  buf.writeUInt16LE(9, 8);
  expectImageError(() => decodeImage(buf, { source: '/x.img' }), 'version',
    /^image \/x\.img format version 9 is newer than this ferry understands \(1\)$/);
});

test('unknown incompatible header flag is refused', () => {
  const buf = concat(encodeImage(smallInput().input));
  buf.writeUInt16LE(0x0001, 10);
  resealTable(buf);
  expectImageError(() => decodeImage(buf), 'version', /format features/);
  buf.writeUInt16LE(0x0100, 10); // compatible feature: ignored
  resealTable(buf);
  decodeImage(buf);
});

test('known section with a newer version is refused', () => {
  const buf = concat(encodeImage(smallInput().input));
  const mem = walk(buf).find((s) => s.type === 3)!;
  buf.writeUInt16LE(2, mem.h + 2);
  resealTable(buf);
  expectImageError(() => decodeImage(buf), 'version', /section \d+ \(memory\) version 2 is newer than this ferry understands \(1\)/);
});

test('unknown required section is refused, unknown optional one is skipped and kept', () => {
  const payload = Buffer.from('ipc state of the future');
  const req = smallInput({ extraSections: [{ type: 77, version: 3, required: true, payload }] }).input;
  expectImageError(() => decodeImage(concat(encodeImage(req))), 'unknown-section', /required section of unknown type 77/);

  const opt = smallInput({ extraSections: [{ type: 77, version: 3, required: false, payload }] }).input;
  const buf = concat(encodeImage(opt));
  const img = decodeImage(buf);
  assert.equal(img.extraSections.length, 1);
  assert.equal(img.extraSections[0]!.type, 77);
  assert.deepEqual(Buffer.from(img.extraSections[0]!.payload), payload);
  assert.ok(img.sections.some((s) => s.name === 'type 77' && !s.required));
  assert.ok(concat(encodeImage(img)).equals(buf));
});

test('missing section and trailing garbage', () => {
  const buf = concat(encodeImage(smallInput().input));
  expectImageError(() => decodeImage(Buffer.concat([buf, Buffer.from([0])])), 'malformed', /follow the END trailer/);
  // turn the wasi section into an unknown optional one: wasi is then missing
  const wasi = walk(buf).find((s) => s.type === 5)!;
  buf.writeUInt16LE(1000, wasi.h);
  buf.writeUInt16LE(0, wasi.h + 4);
  resealTable(buf);
  expectImageError(() => decodeImage(buf), 'missing-section', /has no wasi section/);
});

// ---- files ----

test('writeImageFile / readImageFile: atomic, errors name the file', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-image-'));
  try {
    const file = path.join(dir, 'p.img');
    const { input, mem } = smallInput();
    await writeImageFile(file, input);
    assert.deepEqual(fs.readdirSync(dir), ['p.img']);
    const img = await readImageFile(file);
    assert.ok(img.memory instanceof MemoryImage);
    assert.deepEqual(img.memory.toBytes(), mem.slice(0, 65536));
    await writeImageFile(file, { ...input, meta: { ...input.meta, pid: 'nodeA/2' } }); // replace
    assert.equal((await readImageFile(file)).meta.pid, 'nodeA/2');
    fs.truncateSync(file, 100);
    await assert.rejects(readImageFile(file), (e: unknown) =>
      e instanceof ImageError && e.code === 'truncated' && e.message.startsWith(`image ${file} is truncated`));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('large sparse memory view onto a big SharedArrayBuffer', () => {
  // 64 MiB logical within a 128 MiB shared buffer, a few non-zero pages spread out
  const sab = new SharedArrayBuffer(128 << 20);
  const mem = new Uint8Array(sab);
  const idx = [0, 1, 2, 1000, 16383];
  for (const i of idx) mem[i * 4096 + 17] = i & 0xff | 1;
  const { input } = smallInput();
  const chunks = encodeImage({ ...input, memory: { bytes: mem, logicalBytes: 64 << 20 } });
  const img = decodeImage(concat(chunks));
  assert.deepEqual(img.memory.counts, { total: 16384, zero: 16384 - idx.length, stored: idx.length });
  assert.deepEqual([...img.memory.runs()].map((r) => [r.firstPage, r.pageCount]), [[0, 3], [1000, 1], [16383, 1]]);
  assert.equal(img.memory.page(1000)![17], 1000 & 0xff | 1);
});
