// Dirty tracking: between two freezes, every 4 KiB page whose content changed is
// marked dirty, whoever wrote it: plain stores, memory.fill/copy, atomics, SIMD
// stores, and the WASI host writing into guest memory (fd_read). Each case would fail
// without its tracking (checked by disabling each kind of mark in turn). A process runs
// the plain variant (no marks) until a pre-copy switches it to tracked: from the switch
// on, the same holds.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import binaryen from 'binaryen';
import { loadPrepared } from '../src/vm/cache.ts';
import { WasmProcess } from '../src/vm/process.ts';
import { initialWasiState } from '../src/wasi/host.ts';
import { DIRTY_MAP, TRACK_PAGE } from '../src/vm/layout.ts';
import { sha256 } from '../src/vm/module-meta.ts';
import { TEST_CACHE } from './helpers/ferry.ts';

process.env.FERRY_CACHE_DIR = TEST_CACHE;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A program that, forever, picks a random address in 64 MiB (an LCG), writes there
 *  with one kind of instruction, then spins a while: between two freezes only a few
 *  pages change, so a write that is not tracked shows. */
function writerModule(write: string): Uint8Array {
  const text = `(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1024 1024)
  (data (i32.const 100) "${'\\ab'.repeat(5100)}")
  (func (export "_start") (local $x i32) (local $a i32) (local $i i32)
    (local.set $x (i32.const 12345))
    (loop $forever
      (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 1103515245)) (i32.const 12345)))
      (local.set $a (i32.add (i32.const 65536) (i32.and (local.get $x) (i32.const 0x3f00000))))
      (local.set $a (i32.add (local.get $a) (i32.and (i32.shr_u (local.get $x) (i32.const 7)) (i32.const 0xffff0))))
      ${write}
      (local.set $i (i32.const 300000))
      (loop $spin (br_if $spin (local.tee $i (i32.sub (local.get $i) (i32.const 1)))))
      (br $forever)))
)`;
  const m = binaryen.parseText(text);
  m.setFeatures(binaryen.Features.All & ~binaryen.Features.GC);
  try { return m.emitBinary(); } finally { m.dispose(); }
}

const WRITES: Record<string, string> = {
  'i64.store (unaligned, across a page boundary)': '(i64.store offset=4093 (local.get $a) (i64.const -1))',
  'i32.store8': '(i32.store8 (local.get $a) (i32.add (i32.load8_u (local.get $a)) (i32.const 1)))',
  'memory.fill': '(memory.fill (local.get $a) (i32.const 0xab) (i32.const 9000))',
  'memory.copy': '(memory.copy (local.get $a) (i32.const 100) (i32.const 5000))',
  'i32.atomic.rmw.add': '(drop (i32.atomic.rmw.add (local.get $a) (i32.const 3)))',
  'v128.store': '(v128.store offset=4090 (local.get $a) (v128.const i32x4 1 2 3 4))',
  // The host writes: fd_read of stdin into a random buffer (the iovec itself lives on page 0).
  'fd_read by the WASI host': '(i32.store (i32.const 0) (local.get $a)) (i32.store (i32.const 4) (i32.const 3000)) (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))',
};

async function checkDirty(start: () => WasmProcess): Promise<{ changed: number }> {
  const proc = start();
  try {
    return await rounds(proc);
  } finally {
    await proc.kill();
  }
}

async function rounds(proc: WasmProcess): Promise<{ changed: number }> {
  await new Promise((r) => proc.once('running', r));
  let changedTotal = 0;
  for (let round = 0; round < 4; round++) {
    await sleep(60);
    const c1 = await proc.freeze();
    const before = Buffer.from(c1.memory.subarray(0, c1.logicalBytes));
    proc.bytes.fill(0, DIRTY_MAP, DIRTY_MAP + c1.logicalBytes / TRACK_PAGE); // a new round of tracking
    proc.continue();
    await sleep(40);
    const c2 = await proc.freeze();
    let changed = 0, missed = 0;
    for (let p = 0; p < c1.logicalBytes / TRACK_PAGE; p++) {
      const a = before.subarray(p * TRACK_PAGE, (p + 1) * TRACK_PAGE);
      const b = c2.memory.subarray(p * TRACK_PAGE, (p + 1) * TRACK_PAGE);
      if (!a.equals(b)) { changed++; if (c2.memory[DIRTY_MAP + p] !== 1) missed++; }
    }
    assert.equal(missed, 0, `round ${round}: ${missed} of ${changed} changed pages not marked dirty`);
    changedTotal += changed;
    proc.continue();
  }
  return { changed: changedTotal };
}

describe('dirty tracking: every changed page is marked dirty', () => {
  for (const [name, write] of Object.entries(WRITES)) {
    it(name, async () => {
      const bytes = writerModule(write);
      const loaded = await loadPrepared(bytes, 'tracked', sha256(bytes));
      const stdin = Readable.from((function* () { for (;;) yield Buffer.alloc(65536, 0x5a); })());
      const { changed } = await checkDirty(() => WasmProcess.start(loaded, initialWasiState({ args: ['writer'], env: [], preopens: [] }), { stdin }));
      stdin.destroy();
      assert.ok(changed >= 4, `the writer changed pages (${changed})`);
    });
  }
});

describe('dirty tracking after a switch from the plain variant (what pre-copy does)', () => {
  for (const [name, write] of Object.entries(WRITES)) {
    it(name, async () => {
      const bytes = writerModule(write);
      const h = sha256(bytes);
      const plain = await loadPrepared(bytes, 'plain', h), tracked = await loadPrepared(bytes, 'tracked', h);
      const stdin = Readable.from((function* () { for (;;) yield Buffer.alloc(65536, 0x5a); })());
      const proc = WasmProcess.start(plain, initialWasiState({ args: ['writer'], env: [], preopens: [] }), { stdin });
      try {
        await new Promise((r) => proc.once('running', r));
        await sleep(60);
        assert.ok(await proc.switchVariant(tracked), 'switched while it runs');
        const { changed } = await rounds(proc);
        assert.ok(changed >= 4, `the writer changed pages (${changed})`);
      } finally {
        await proc.kill();
        stdin.destroy();
      }
    });
  }
});
