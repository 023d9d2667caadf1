// Module preparation: turn any wasm32-wasi command module into a migratable one.
//
// What the transform does (binaryen, then its asyncify pass):
//  1. memory becomes imported (`ferry.memory`) and shared, 65536 pages; the program
//     sees a virtual memory.size/memory.grow backed by a logical-size global, so the
//     bookkeeping region at the top (src/vm/layout.ts) never collides with its data,
//     whatever its linker layout;
//  2. safe points: a poll of the stop flag at every loop header, and at the entry of
//     every function that can recurse (direct-call cycles, indirect calls), calling
//     `ferry.safepoint` when set; blocking WASI imports are safe points as well;
//  3. dirty tracking: every write (stores, atomics, SIMD lane stores, memory.copy/
//     fill/init) marks its 4 KiB page(s) in the dirty map;
//  4. variant 'faulting' adds a present check before every access (post-copy and
//     demand paging); variant 'tracked' has none; variant 'plain' (steady state) has
//     neither checks nor dirty marks. All three hand asyncify the same code (a call to
//     a check function, empty in 'tracked' and 'plain' and inlined after asyncify in
//     'faulting'; the marks, dropped after asyncify in 'plain'), so their asyncify
//     frames match and a process captured in one resumes in another: a process runs
//     plain, switches to tracked for pre-copy, and leaves faulting once all pages are local;
//  5. every mutable global is exported so the execution state can be captured;
//  6. asyncify (optimizing the functions it instruments), with only the safe-point and
//     blocking imports able to unwind.
//  7. fast paths (fast-path.ts): each function asyncify instrumented is split into its
//     normal entry, where the state checks that cannot fire are folded away, and the
//     rewind path asyncify made (FERRY_NO_FAST_PATHS=1 leaves them out, to compare).
import binaryen from 'binaryen';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ABSENT_MAP, DIRTY_MAP, EXPORT_GLOBAL_PREFIX, EXPORT_INIT_DATA, EXPORT_LOGICAL_PAGES, EXPORT_START_FN,
  FERRY_MODULE, IMPORT_FAULT, IMPORT_MEMORY, IMPORT_SAFEPOINT, LOGICAL_PAGES_WORD, MAX_LOGICAL_PAGES,
  PHYSICAL_PAGES, STOP_FLAG, TRACK_SHIFT,
} from './layout.ts';
import { SUSPENDABLE_IMPORTS } from '../wasi/types.ts';
import { FerryError } from '../errors.ts';
import { sha256, TRANSFORM_VERSION, WASI_MODULE, type PreparedMeta, type PreparedModule, type ValType, type Variant } from './module-meta.ts';

const FEATURES = binaryen.Features.Atomics | binaryen.Features.MutableGlobals |
  binaryen.Features.NontrappingFPToInt | binaryen.Features.SIMD128 | binaryen.Features.BulkMemory |
  binaryen.Features.BulkMemoryOpt | binaryen.Features.SignExt | binaryen.Features.ReferenceTypes |
  binaryen.Features.Multivalue | binaryen.Features.ExtendedConst | binaryen.Features.ExceptionHandling;

import { b, childSlots, classById, rewriteFunction, type Slot } from './ir.ts';
import { readStopFlag } from './poll.ts';
import { splitFastPaths } from './fast-path.ts';

const INIT_DATA_FN = 'ferry$init_data';
const SIMD_LANE_BYTES = [1, 2, 4, 8, 1, 2, 4, 8]; // Load8Lane..Load64Lane, Store8Lane..Store64Lane

interface Ctx {
  m: binaryen.Module;
  variant: Variant;
  tmp: number; a: number; c: number; d: number; // i32 scratch locals of the current function
  r: number; // i32 scratch local for reads (so a read inside a store's value leaves the store's address alone)
  fn: number; // the current function (to add locals)
  valueTmp: Map<number, number>; // per value type: scratch local holding a store's value while its marks are written
  labels: number; // counter for unique block/loop names
  stats: PreparedMeta['stats'];
  growFn: string; markRangeFn: string; checkRangeFn: string; checkFn: string; logicalGlobal: string;
}

/** ptr -> (block (result i32) (local.set $t ptr) (call $check t+offset bytes) (local.get $t)).
 *  Both variants emit the same code here: only the body of the check function differs
 *  (empty in 'tracked', where the optimizer after asyncify removes the call). */
function wrapPtr(ctx: Ctx, ptr: number, offset: number, bytes: number, local: number): number {
  const { m } = ctx;
  const start = offset === 0 ? m.local.get(local, binaryen.i32) : m.i32.add(m.local.get(local, binaryen.i32), m.i32.const(offset | 0));
  return m.block(null, [m.local.set(local, ptr), m.call(ctx.checkFn, [start, m.i32.const(bytes)], binaryen.none), m.local.get(local, binaryen.i32)], binaryen.i32);
}

function wrapRead(ctx: Ctx, ptr: number, offset: number, bytes: number): number {
  ctx.stats.reads++;
  return wrapPtr(ctx, ptr, offset, bytes, ctx.r);
}

/** A write: the address is checked before (present check), and its page(s) marked dirty
 *  AFTER the write itself, so a pre-copy round that clears a mark and then copies the page
 *  never misses the write that mark stood for (marking before, even just before, leaves a
 *  window in which the round clears the mark and copies the page before the write lands).
 *  Returns the new address operand and the marks to run after the write, over the local
 *  holding the address (a write nested in the value gets its own local). */
function wrapWrite(ctx: Ctx, ptr: number, operands: number[], offset: number, bytes: number): { ptr: number; marks: number[] } {
  const { m } = ctx;
  ctx.stats.writes++;
  const local = operands.some(hasNestedWrite) ? b._BinaryenFunctionAddVar(ctx.fn, binaryen.i32) : ctx.tmp;
  const at = (delta: number) => {
    const d = (offset + delta) >>> 0;
    const base = m.local.get(local, binaryen.i32);
    return m.i32.shr_u(d === 0 ? base : m.i32.add(base, m.i32.const(d | 0)), m.i32.const(TRACK_SHIFT));
  };
  const marks = [m.i32.store8(DIRTY_MAP, 1, at(0), m.i32.const(1))];
  if (bytes > 1) marks.push(m.i32.store8(DIRTY_MAP, 1, at(bytes - 1), m.i32.const(1)));
  return { ptr: wrapPtr(ctx, ptr, offset, bytes, local), marks };
}

/** The write expression followed by its marks, keeping the write's result (if any). */
function thenMark(ctx: Ctx, write: number, marks: number[]): number {
  const { m } = ctx;
  const t = binaryen.getExpressionType(write);
  if (t === binaryen.none) return m.block(null, [write, ...marks], binaryen.none);
  if (t === binaryen.unreachable) return write;
  let v = ctx.valueTmp.get(t);
  if (v === undefined) { v = b._BinaryenFunctionAddVar(ctx.fn, t) as number; ctx.valueTmp.set(t, v); }
  return m.block(null, [m.local.set(v, write), ...marks, m.local.get(v, t)], t);
}

const WRITE_IDS = new Set<number>();
/** Does the expression contain a write (whose wrapper uses the shared scratch locals)? */
function hasNestedWrite(e: number): boolean {
  if (WRITE_IDS.size === 0) for (const id of [binaryen.StoreId, binaryen.AtomicRMWId, binaryen.AtomicCmpxchgId, binaryen.SIMDLoadStoreLaneId, binaryen.MemoryCopyId, binaryen.MemoryFillId, binaryen.MemoryInitId]) WRITE_IDS.add(id);
  const stack = [e];
  while (stack.length) {
    const x = stack.pop()!;
    const id = binaryen.getExpressionId(x);
    if (WRITE_IDS.has(id)) return true;
    const cls = classById.get(id);
    if (cls !== undefined) for (const s of childSlots(x, cls)) stack.push(s.child);
  }
  return false;
}

/** memory.copy/fill/init: evaluate operands into locals, mark [dest, dest+size), then run it. */
function wrapBulk(ctx: Ctx, expr: number, cls: 'MemoryCopy' | 'MemoryFill' | 'MemoryInit'): number {
  const { m, a, c, d } = ctx;
  const C = b[cls];
  const get = (i: number) => m.local.get(i, binaryen.i32);
  ctx.stats.bulk++;
  const dest = C.getDest(expr);
  const size = C.getSize(expr);
  const second = cls === 'MemoryCopy' ? C.getSource(expr) : cls === 'MemoryFill' ? C.getValue(expr) : C.getOffset(expr);
  const body = [m.local.set(a, dest), m.local.set(c, second), m.local.set(d, size)];
  body.push(m.call(ctx.checkRangeFn, [get(a), get(d)], binaryen.none));
  if (cls === 'MemoryCopy') body.push(m.call(ctx.checkRangeFn, [get(c), get(d)], binaryen.none));
  C.setDest(expr, get(a)); C.setSize(expr, get(d));
  if (cls === 'MemoryCopy') C.setSource(expr, get(c));
  else if (cls === 'MemoryFill') C.setValue(expr, get(c));
  else C.setOffset(expr, get(c));
  body.push(expr);
  // Marked after the write (see wrapWrite); the operands are in locals nothing else touches.
  body.push(m.call(ctx.markRangeFn, [get(a), get(d)], binaryen.none));
  return m.block(null, body, binaryen.none);
}

function pollStop(m: binaryen.Module): number {
  return m.if(readStopFlag(m), m.call(IMPORT_SAFEPOINT, [], binaryen.none));
}

/**
 * The loop's safe point, kept out of its body: the header only tests the stop flag and
 * leaves the loop when it is set; the call to ferry.safepoint sits in a wrapper loop
 * that then re-enters the original loop at its header (what the header's next iteration
 * would have done). The original body thus holds no call that can unwind, so asyncify
 * leaves it uninstrumented (no state checks in every iteration) and the optimizer sees
 * a plain loop; the stop flag is still read on every iteration.
 *
 *   (block $exit                 ;; type of the original loop
 *     (loop $again
 *       (block $restart
 *         (br $exit (loop $L (br_if $restart (stop flag)) body)))
 *       (call ferry.safepoint)
 *       (br $again)))
 */
function pollLoop(ctx: Ctx, loop: number): number {
  const { m } = ctx;
  const n = ctx.labels++;
  const exit = `ferry$exit${n}`, again = `ferry$again${n}`, restart = `ferry$restart${n}`;
  const body = b.Loop.getBody(loop);
  b.Loop.setBody(loop, m.block(null, [
    m.br(restart, readStopFlag(m)), body,
  ], binaryen.getExpressionType(body)));
  b.Loop.finalize?.(loop);
  const type = binaryen.getExpressionType(loop);
  const leave = type === binaryen.none ? m.block(null, [loop, m.br(exit)])
    : type === binaryen.unreachable ? loop : m.br(exit, 0, loop);
  // binaryen.js does not infer a block's type from the branches to it: give it.
  return m.block(exit, [
    m.loop(again, m.block(null, [
      m.block(restart, [leave], binaryen.none),
      m.call(IMPORT_SAFEPOINT, [], binaryen.none),
      m.br(again),
    ], binaryen.unreachable)),
  ], type === binaryen.unreachable ? binaryen.none : type);
}

/** Post-order walk (iterative: real binaries nest deeper than the JS stack allows). */
function instrumentBody(ctx: Ctx, body: number, setBody: Slot): void {
  const { m } = ctx;
  type Item = { e: number; set: Slot; done: boolean };
  const stack: Item[] = [{ e: body, set: setBody, done: false }];
  while (stack.length) {
    const item = stack.pop()!;
    const e = item.e;
    const id = binaryen.getExpressionId(e);
    const cls = classById.get(id);
    if (cls === undefined) throw new FerryError('unsupported-module', `unsupported instruction (binaryen expression id ${id})`);
    if (!item.done) {
      stack.push({ e, set: item.set, done: true });
      for (const s of childSlots(e, cls)) stack.push({ e: s.child, set: s.set, done: false });
      continue;
    }
    switch (cls) {
      case 'Loop': {
        ctx.stats.loopPolls++;
        item.set(pollLoop(ctx, e));
        break;
      }
      case 'Store': {
        const w = wrapWrite(ctx, b.Store.getPtr(e), [b.Store.getValue(e)], b.Store.getOffset(e), b.Store.getBytes(e));
        b.Store.setPtr(e, w.ptr);
        item.set(thenMark(ctx, e, w.marks));
        break;
      }
      case 'Load': b.Load.setPtr(e, wrapRead(ctx, b.Load.getPtr(e), b.Load.getOffset(e), b.Load.getBytes(e))); break;
      case 'AtomicRMW': {
        const w = wrapWrite(ctx, b.AtomicRMW.getPtr(e), [b.AtomicRMW.getValue(e)], b.AtomicRMW.getOffset(e), b.AtomicRMW.getBytes(e));
        b.AtomicRMW.setPtr(e, w.ptr);
        item.set(thenMark(ctx, e, w.marks));
        break;
      }
      case 'AtomicCmpxchg': {
        // Both the expected value and the replacement are evaluated after the address: either may hold a write.
        const w = wrapWrite(ctx, b.AtomicCmpxchg.getPtr(e), [b.AtomicCmpxchg.getExpected(e), b.AtomicCmpxchg.getReplacement(e)], b.AtomicCmpxchg.getOffset(e), b.AtomicCmpxchg.getBytes(e));
        b.AtomicCmpxchg.setPtr(e, w.ptr);
        item.set(thenMark(ctx, e, w.marks));
        break;
      }
      case 'AtomicWait': {
        const bytes = b.AtomicWait.getExpectedType(e) === binaryen.i64 ? 8 : 4;
        b.AtomicWait.setPtr(e, wrapRead(ctx, b.AtomicWait.getPtr(e), 0, bytes));
        break;
      }
      case 'SIMDLoad': b.SIMDLoad.setPtr(e, wrapRead(ctx, b.SIMDLoad.getPtr(e), b.SIMDLoad.getOffset(e), 16)); break;
      case 'SIMDLoadStoreLane': {
        const op = b.SIMDLoadStoreLane.getOp(e);
        const bytes = SIMD_LANE_BYTES[op] ?? 16;
        if (op >= 4) {
          const w = wrapWrite(ctx, b.SIMDLoadStoreLane.getPtr(e), [b.SIMDLoadStoreLane.getVec(e)], b.SIMDLoadStoreLane.getOffset(e), bytes);
          b.SIMDLoadStoreLane.setPtr(e, w.ptr);
          item.set(thenMark(ctx, e, w.marks));
        } else b.SIMDLoadStoreLane.setPtr(e, wrapRead(ctx, b.SIMDLoadStoreLane.getPtr(e), b.SIMDLoadStoreLane.getOffset(e), bytes));
        break;
      }
      case 'MemoryCopy': case 'MemoryFill': case 'MemoryInit': item.set(wrapBulk(ctx, e, cls)); break;
      case 'MemorySize': item.set(m.global.get(ctx.logicalGlobal, binaryen.i32)); break;
      case 'MemoryGrow': item.set(m.call(ctx.growFn, [b.MemoryGrow.getDelta(e)], binaryen.i32)); break;
      case 'Call': case 'CallIndirect':
        if (binaryen.getExpressionInfo(e) && (binaryen.getExpressionInfo(e) as any).isReturn)
          throw new FerryError('unsupported-module', 'module uses tail calls (return_call), which cannot be made migratable');
        break;
    }
  }
}

/** Functions whose entry needs a safe point: members of direct-call cycles, and any
 *  function making an indirect call (every cycle through an indirect edge passes one). */
function recursiveFunctions(m: binaryen.Module, names: string[]): Set<string> {
  const callees = new Map<string, Set<string>>();
  const indirect = new Set<string>();
  for (const name of names) {
    const out = new Set<string>();
    const stack = [binaryen.getFunctionInfo(m.getFunction(name)).body];
    while (stack.length) {
      const e = stack.pop()!;
      const cls = classById.get(binaryen.getExpressionId(e));
      if (cls === 'Call') out.add(b.Call.getTarget(e));
      else if (cls === 'CallIndirect') indirect.add(name);
      if (cls) for (const s of childSlots(e, cls)) stack.push(s.child);
    }
    callees.set(name, out);
  }
  // Tarjan's SCC, iterative.
  const index = new Map<string, number>(), low = new Map<string, number>(), onStack = new Set<string>();
  const sccStack: string[] = [];
  const result = new Set<string>(indirect);
  let counter = 0;
  for (const root of names) {
    if (index.has(root)) continue;
    const work: { v: string; it: Iterator<string> }[] = [];
    const visit = (v: string) => {
      index.set(v, counter); low.set(v, counter); counter++;
      sccStack.push(v); onStack.add(v);
      work.push({ v, it: (callees.get(v) ?? new Set()).values() });
    };
    visit(root);
    while (work.length) {
      const top = work[work.length - 1];
      const next = top.it.next();
      if (!next.done) {
        const w = next.value;
        if (!callees.has(w)) continue; // import
        if (!index.has(w)) visit(w);
        else if (onStack.has(w)) low.set(top.v, Math.min(low.get(top.v)!, index.get(w)!));
        continue;
      }
      work.pop();
      if (work.length) {
        const parent = work[work.length - 1].v;
        low.set(parent, Math.min(low.get(parent)!, low.get(top.v)!));
      }
      if (low.get(top.v) === index.get(top.v)) {
        const scc: string[] = [];
        let w: string;
        do { w = sccStack.pop()!; onStack.delete(w); scc.push(w); } while (w !== top.v);
        if (scc.length > 1 || callees.get(top.v)!.has(top.v)) for (const f of scc) result.add(f);
      }
    }
  }
  return result;
}

/** Faulting variant, after asyncify: replace each call to the check function by its
 *  body (the optimizer would not inline it, and a call per access is slow). Locals
 *  added now are not part of any asyncify frame. */
function inlineChecks(m: binaryen.Module, ctx: Ctx, names: string[]): void {
  const i32 = binaryen.i32;
  for (const name of names) {
    const fn = m.getFunction(name);
    let x = -1, n = -1;
    rewriteFunction(fn, (e, cls) => {
      if (cls !== 'Call' || b.Call.getTarget(e) !== ctx.checkFn) return undefined;
      if (x < 0) { x = b._BinaryenFunctionAddVar(fn, i32); n = b._BinaryenFunctionAddVar(fn, i32); }
      const get = (i: number) => m.local.get(i, i32);
      const page = (p: number) => m.i32.load8_u(ABSENT_MAP, 1, m.i32.shr_u(p, m.i32.const(TRACK_SHIFT)));
      return m.block(null, [
        m.local.set(x, b.Call.getOperandAt(e, 0)), m.local.set(n, b.Call.getOperandAt(e, 1)),
        m.if(m.i32.or(page(get(x)), page(m.i32.add(get(x), m.i32.sub(get(n), m.i32.const(1))))),
          m.call(IMPORT_FAULT, [get(x), get(n)], binaryen.none)),
      ], binaryen.none);
    });
  }
}

/** Plain variant, after asyncify: every dirty mark becomes nothing. A mark is a one-byte
 *  store at offset DIRTY_MAP (wrapWrite; no store of the program reaches the bookkeeping
 *  region); its operands are kept as drops (the optimizer removes them, unless asyncify's
 *  optimizer moved a local.tee into them). ferry$mark_range (bulk writes) becomes empty,
 *  and the optimizer drops the calls. */
function dropMarks(m: binaryen.Module, ctx: Ctx, names: string[]): void {
  for (const name of names) {
    rewriteFunction(m.getFunction(name), (e, cls) =>
      cls === 'Store' && b.Store.getBytes(e) === 1 && (b.Store.getOffset(e) >>> 0) === DIRTY_MAP
        ? m.block(null, [m.drop(b.Store.getPtr(e)), m.drop(b.Store.getValue(e))], binaryen.none)
        : undefined);
  }
  b.Function.setBody(m.getFunction(ctx.markRangeFn), m.nop());
}

function valType(t: number): ValType {
  if (t === binaryen.i32) return 'i32';
  if (t === binaryen.i64) return 'i64';
  if (t === binaryen.f32) return 'f32';
  if (t === binaryen.f64) return 'f64';
  throw new FerryError('unsupported-module', 'a mutable global of a reference or vector type cannot be captured');
}

function addHelpers(m: binaryen.Module, ctx: Ctx, maxPages: number): void {
  const i32 = binaryen.i32;
  const get = (i: number) => m.local.get(i, i32);
  // ferry_grow(delta) -> old pages or -1: memory.grow against the logical size.
  m.addFunction(ctx.growFn, i32, i32, [i32], m.block(null, [
    m.local.set(1, m.global.get(ctx.logicalGlobal, i32)),
    m.if(m.i32.gt_u(get(0), m.i32.sub(m.i32.const(maxPages), get(1))), m.return(m.i32.const(-1))),
    m.global.set(ctx.logicalGlobal, m.i32.add(get(1), get(0))),
    m.i32.atomic.store(0, m.i32.const(LOGICAL_PAGES_WORD | 0), m.global.get(ctx.logicalGlobal, i32)), // the owner reads it
    get(1),
  ], i32));
  // ferry_mark_range(addr, len): mark every 4 KiB page of [addr, addr+len) dirty.
  const pageLoop = (bodyAt: (page: number) => number) => m.block(null, [
    m.if(m.i32.eqz(get(1)), m.return()),
    m.local.set(2, m.i32.shr_u(get(0), m.i32.const(TRACK_SHIFT))),
    m.local.set(3, m.i32.shr_u(m.i32.sub(m.i32.add(get(0), get(1)), m.i32.const(1)), m.i32.const(TRACK_SHIFT))),
    m.loop('pages', m.block(null, [
      bodyAt(2),
      m.local.set(2, m.i32.add(get(2), m.i32.const(1))),
      m.br('pages', m.i32.le_u(get(2), get(3))),
    ])),
  ]);
  m.addFunction(ctx.markRangeFn, binaryen.createType([i32, i32]), binaryen.none, [i32, i32],
    pageLoop((p) => m.i32.store8(DIRTY_MAP, 1, get(p), m.i32.const(1))));
  // ferry_check_range(addr, len): fault the range in if any page of it is absent.
  // ferry_check(addr, bytes): fault [addr, addr+bytes) in if either end's page is absent.
  // Both are empty in 'tracked' and 'plain' (the optimizer then drops every call to them).
  const pair = binaryen.createType([i32, i32]);
  if (ctx.variant === 'faulting') {
    m.addFunction(ctx.checkRangeFn, pair, binaryen.none, [i32, i32],
      pageLoop((p) => m.if(m.i32.load8_u(ABSENT_MAP, 1, get(p)),
        m.block(null, [m.call(IMPORT_FAULT, [get(0), get(1)], binaryen.none), m.return()]))));
    const page = (e: number) => m.i32.load8_u(ABSENT_MAP, 1, m.i32.shr_u(e, m.i32.const(TRACK_SHIFT)));
    m.addFunction(ctx.checkFn, pair, binaryen.none, [],
      m.if(m.i32.or(page(get(0)), page(m.i32.add(get(0), m.i32.sub(get(1), m.i32.const(1))))),
        m.call(IMPORT_FAULT, [get(0), get(1)], binaryen.none)));
  } else {
    m.addFunction(ctx.checkRangeFn, pair, binaryen.none, [], m.nop());
    m.addFunction(ctx.checkFn, pair, binaryen.none, [], m.nop());
  }
}

export function prepareModule(original: Uint8Array, variant: Variant = 'tracked'): PreparedModule {
  let m: binaryen.Module;
  try { m = binaryen.readBinary(original); } catch (e) {
    throw new FerryError('invalid-module', `not a valid WebAssembly module (${describe(e)})`);
  }
  try {
    return transform(m, original, variant);
  } finally {
    m.dispose();
  }
}

function describe(e: unknown): string {
  if (e instanceof Error) return e.message;
  const message = (e as { message?: unknown } | null)?.message; // binaryen throws plain objects
  return typeof message === 'string' ? message : String(e);
}

/** FERRY_TRANSFORM_LOG=1: each stage's time and the process's RSS on stderr (big modules). */
function stage(name: string, t0: number): void {
  if (process.env.FERRY_TRANSFORM_LOG) process.stderr.write(`ferry transform: ${name} done at ${((performance.now() - t0) / 1000).toFixed(1)} s, rss ${(process.memoryUsage.rss() / 1048576).toFixed(0)} MiB\n`);
}

function transform(m: binaryen.Module, original: Uint8Array, variant: Variant): PreparedModule {
  const t0 = performance.now();
  m.setFeatures(FEATURES);
  const features = m.getFeatures();
  void features;

  // Inspect imports and exports: a WASI command imports only WASI and exports _start.
  const funcNames: string[] = [];
  for (let i = 0; i < m.getNumFunctions(); i++) {
    const info = binaryen.getFunctionInfo(m.getFunctionByIndex(i));
    if (info.module) {
      if (info.module !== WASI_MODULE)
        throw new FerryError('not-wasi-command', `module imports ${info.module}.${info.base}; only ${WASI_MODULE} imports are supported`);
    } else funcNames.push(info.name);
  }
  let memoryName: string | null = null;
  let hasStart = false;
  for (let i = 0; i < m.getNumExports(); i++) {
    const ex = binaryen.getExportInfo(m.getExportByIndex(i));
    if (ex.kind === binaryen.ExternalMemory) memoryName = ex.value;
    if (ex.kind === binaryen.ExternalFunction && ex.name === '_start') hasStart = true;
  }
  if (!hasStart) throw new FerryError('not-wasi-command', 'module is not a WASI command: it exports no _start function');
  if (!m.hasMemory()) throw new FerryError('not-wasi-command', 'module has no memory');
  const mem = m.getMemoryInfo();
  if (mem.is64) throw new FerryError('unsupported-module', 'memory64 modules are not supported');
  if (mem.module) throw new FerryError('unsupported-module', 'module imports its memory; only modules defining their own are supported');
  const maxPages = Math.min(mem.max ?? MAX_LOGICAL_PAGES, MAX_LOGICAL_PAGES);
  if (mem.initial > maxPages) throw new FerryError('unsupported-module', `module needs ${mem.initial} pages of memory; at most ${MAX_LOGICAL_PAGES} fit beside ferry's bookkeeping`);

  // Data segments become passive: instantiating the module then writes no memory, so a
  // destination can instantiate it while pages arrive, and a resumed process's memory is
  // never overwritten with initial data. A fresh start copies them in (EXPORT_INIT_DATA).
  const segments: binaryen.MemorySegment[] = [];
  const dataRanges: [number, number][] = [];
  const memInternal = memoryName ?? '0';
  const inits: binaryen.ExpressionRef[] = [];
  for (let i = 0; i < (b._BinaryenGetNumDataSegments(m.ptr) as number); i++) {
    const info = (m as any).getDataSegmentInfo(m.getDataSegmentByIndex(i)) as { name: string; offset: number | null; data: ArrayBuffer; passive: boolean };
    const data = new Uint8Array(info.data);
    if (!info.passive) {
      const offset = (info.offset ?? 0) >>> 0;
      dataRanges.push([offset, offset + data.length]);
      inits.push(m.memory.init(info.name, m.i32.const(offset | 0), m.i32.const(0), m.i32.const(data.length), memInternal), m.data.drop(info.name));
    }
    segments.push({ name: info.name, data, passive: true } as any);
  }
  m.setMemory(PHYSICAL_PAGES, PHYSICAL_PAGES, null, segments, true, false, memInternal);
  m.addFunction(INIT_DATA_FN, binaryen.none, binaryen.none, [], m.block(null, inits));
  m.addFunctionExport(INIT_DATA_FN, EXPORT_INIT_DATA);
  m.addMemoryImport(memInternal, FERRY_MODULE, IMPORT_MEMORY, true);

  // The start function would rerun on every re-instantiation: run it only on a fresh start.
  const start = m.getStart();
  let hasStartFunction = false;
  if (start) {
    const name = binaryen.getFunctionInfo(start).name;
    m.setStart(0 as any);
    m.addFunctionExport(name, EXPORT_START_FN);
    hasStartFunction = true;
  }

  // Capturable globals: export every mutable one.
  const globals: PreparedMeta['globals'] = [];
  for (let i = 0; i < m.getNumGlobals(); i++) {
    const g = binaryen.getGlobalInfo(m.getGlobalByIndex(i));
    if (!g.mutable || g.module) continue;
    const exp = `${EXPORT_GLOBAL_PREFIX}${globals.length}`;
    globals.push({ export: exp, name: g.name, type: valType(g.type) });
    m.addGlobalExport(g.name, exp);
  }
  const logicalGlobal = 'ferry$logical_pages';
  m.addGlobal(logicalGlobal, binaryen.i32, true, m.i32.const(mem.initial));
  m.addGlobalExport(logicalGlobal, EXPORT_LOGICAL_PAGES);

  m.addFunctionImport(IMPORT_SAFEPOINT, FERRY_MODULE, IMPORT_SAFEPOINT, binaryen.none, binaryen.none);
  m.addFunctionImport(IMPORT_FAULT, FERRY_MODULE, IMPORT_FAULT, binaryen.createType([binaryen.i32, binaryen.i32]), binaryen.none);

  const stats: PreparedMeta['stats'] = { functions: funcNames.length, loopPolls: 0, entryPolls: 0, writes: 0, reads: 0, bulk: 0 };
  const ctx: Ctx = { m, variant, tmp: 0, a: 0, c: 0, d: 0, r: 0, fn: 0, valueTmp: new Map(), labels: 0, stats, logicalGlobal,
    growFn: 'ferry$grow', markRangeFn: 'ferry$mark_range', checkRangeFn: 'ferry$check_range', checkFn: 'ferry$check' };
  const recursive = recursiveFunctions(m, funcNames);
  for (const name of funcNames) {
    const fn = m.getFunction(name);
    // Same scratch locals in both variants, so asyncify frames are interchangeable.
    ctx.tmp = b._BinaryenFunctionAddVar(fn, binaryen.i32);
    ctx.a = b._BinaryenFunctionAddVar(fn, binaryen.i32);
    ctx.c = b._BinaryenFunctionAddVar(fn, binaryen.i32);
    ctx.d = b._BinaryenFunctionAddVar(fn, binaryen.i32);
    ctx.r = b._BinaryenFunctionAddVar(fn, binaryen.i32);
    ctx.fn = fn;
    ctx.valueTmp = new Map();
    const body = binaryen.getFunctionInfo(fn).body;
    instrumentBody(ctx, body, (r) => b.Function.setBody(fn, r));
    if (recursive.has(name)) {
      stats.entryPolls++;
      const cur = b.Function.getBody(fn);
      b.Function.setBody(fn, m.block(null, [pollStop(m), cur], binaryen.getExpressionType(cur)));
    }
  }
  addHelpers(m, ctx, maxPages);
  stage('instrument', t0);

  if (!m.validate()) throw new FerryError('transform-failed', 'the prepared module does not validate (a bug in ferry\'s transform)');
  const asyncImports = [`${FERRY_MODULE}.${IMPORT_SAFEPOINT}`, ...SUSPENDABLE_IMPORTS.map((n) => `${WASI_MODULE}.${n}`)];
  const native = nativeWasmOpt();
  if (native) {
    // binaryen.js lives in a 4 GB wasm heap that asyncify on a very large program
    // (yosys: 34k functions) outgrows; a native wasm-opt, when given, does these steps.
    // Its output is the same for every variant but 'faulting' (present checks stay calls;
    // 'plain' keeps its dirty marks): slower, equally correct.
    const instrumented = m.emitBinary();
    stage('emit for native wasm-opt', t0);
    const bytes = runNativeAsyncify(native, instrumented, asyncImports);
    stage('native asyncify + optimize', t0);
    return { bytes, meta: { transformVersion: TRANSFORM_VERSION, originalHash: sha256(original), variant,
      initialPages: mem.initial, maxPages, dataRanges, globals, hasStartFunction, stats } };
  }
  binaryen.setPassArgument('asyncify-imports', asyncImports.join(','));
  // Asyncify optimizes the functions it instruments (fewer locals to save, fewer state
  // checks). Its frame layout then depends on the code it sees, which is why both
  // variants hand it the same code (see wrapAccess).
  binaryen.setOptimizeLevel(2);
  binaryen.setShrinkLevel(0);
  try {
    m.runPasses(['asyncify']);
  } finally {
    binaryen.setPassArgument('asyncify-imports', null);
  }
  stage('asyncify', t0);
  if (variant === 'faulting') inlineChecks(m, ctx, funcNames);
  if (variant === 'plain') dropMarks(m, ctx, funcNames);
  if (process.env.FERRY_NO_FAST_PATHS !== '1') stats.fastPaths = splitFastPaths(m, funcNames, asyncImports, recursive);
  stage('fast paths', t0);
  binaryen.setOptimizeLevel(2);
  m.optimize();
  stage('optimize', t0);
  const bytes = m.emitBinary();
  return {
    bytes,
    meta: {
      transformVersion: TRANSFORM_VERSION, originalHash: sha256(original), variant,
      initialPages: mem.initial, maxPages, dataRanges, globals, hasStartFunction, stats,
    },
  };
}

/** FERRY_WASM_OPT: path of a native wasm-opt (e.g. Debian's binaryen) for the asyncify
 *  and optimize steps. Optional: without it everything runs in binaryen.js. */
export function nativeWasmOpt(): string | null {
  return process.env.FERRY_WASM_OPT || null;
}

const NATIVE_FEATURES = ['--enable-threads', '--enable-bulk-memory', '--enable-simd', '--enable-sign-ext',
  '--enable-mutable-globals', '--enable-nontrapping-float-to-int', '--enable-reference-types',
  '--enable-multivalue', '--enable-extended-const', '--enable-exception-handling'];

function runNativeAsyncify(wasmOpt: string, input: Uint8Array, asyncImports: string[]): Uint8Array {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-wasm-opt-'));
  try {
    writeFileSync(join(dir, 'in.wasm'), input);
    const r = spawnSync(wasmOpt, [join(dir, 'in.wasm'), '-o', join(dir, 'out.wasm'), ...NATIVE_FEATURES,
      '--asyncify', `--pass-arg=asyncify-imports@${asyncImports.join(',')}`, '-O2'], { encoding: 'utf8', maxBuffer: 64 << 20 });
    if (r.error) throw new FerryError('transform-failed', `cannot run ${wasmOpt}: ${r.error.message}`);
    if (r.status !== 0) throw new FerryError('transform-failed', `${wasmOpt} failed: ${(r.stderr || '').trim().split('\n').slice(-3).join(' ')}`);
    return readFileSync(join(dir, 'out.wasm'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
