// The fast paths of asyncify-instrumented functions (src/vm/fast-path.ts): which reads
// of the asyncify state the pass may fold to 0 (clean: the state cannot be 1 there) and
// which it must keep (a call that can unwind came before, and no check since). Cases are
// data: a function body after asyncify's fashion, and how many reads must stay in it.
// The end-to-end check is elsewhere: every hop and checkpoint test stops processes at
// random points in these fast paths and resumes them through the rewind paths.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import binaryen from 'binaryen';
import { splitFastPaths } from '../src/vm/fast-path.ts';
import { prepareModule } from '../src/vm/prepare.ts';
import { STOP_FLAG } from '../src/vm/layout.ts';
import { ROOT } from './helpers/ferry.ts';

const S = '(global.get $__asyncify_state)';
const CASES: { name: string; body: string; kept: number | 'not split' }[] = [
  { name: 'a read before any call is 0; one after a call that can unwind stays', body: `(drop ${S}) (call $g) (drop ${S})`, kept: 1 },
  { name: 'after the unwinding check (if state == 1: return), the state is 0', body: `(call $g) (if (i32.eq ${S} (i32.const 1)) (then (return))) (drop ${S})`, kept: 1 },
  { name: 'after br_if out on state == 1, the state is 0 on the fall-through', body: `(block $u (call $g) (br_if $u (i32.eq ${S} (i32.const 1))) (drop ${S})) (drop ${S})`, kept: 2 },
  { name: 'a call that cannot unwind leaves the state 0', body: `(call $h) (drop ${S})`, kept: 0 },
  { name: 'an indirect call may unwind', body: `(call_indirect (type $v) (i32.const 0)) (drop ${S})`, kept: 1 },
  { name: 'a loop head is reached again after a call in its body', body: `(loop $l (drop ${S}) (call $g) (br_if $l (local.get 0)))`, kept: 1 },
  { name: 'a loop whose back edge is taken only where the state is 0 keeps its head clean', body: `(loop $l (drop ${S}) (call $g) (br_if $l (i32.eqz ${S})))`, kept: 1 },
  { name: 'if (state): the else side is clean, the then side not', body: `(call $g) (if ${S} (then (drop ${S})) (else (drop ${S})))`, kept: 2 },
  { name: 'if (state == 0): the then side is clean', body: `(call $g) (if (i32.eqz ${S}) (then (drop ${S})) (else (drop ${S})))`, kept: 2 },
  { name: 'branches join: dirty on either side is dirty after', body: `(if (local.get 0) (then (call $g))) (drop ${S})`, kept: 1 },
  { name: 'an arm that ends in unreachable does not join', body: `(call $g) (if (i32.eq ${S} (i32.const 1)) (then (unreachable))) (drop ${S})`, kept: 1 },
  { name: 'exceptions are not modelled: the function is left as it was', body: `(try (do (call $g)) (catch_all)) (drop ${S})`, kept: 'not split' },
];

function moduleWith(body: string, memory = false): binaryen.Module {
  const m = binaryen.parseText(`(module
    (type $v (func))
    (import "ferry" "safepoint" (func $sp))
    ${memory ? '(import "ferry" "memory" (memory 65536 65536 shared))' : ''}
    (global $__asyncify_state (mut i32) (i32.const 0))
    (table 1 funcref)
    (func $g (call $sp) (drop ${S}))
    (func $h (nop))
    (func $f (param i32) ${body}))`);
  m.setFeatures(binaryen.Features.All & ~binaryen.Features.GC);
  assert.ok(m.validate(), 'the case validates');
  return m;
}

/** Reads of the state in a body. */
function stateReads(wat: string): number { return wat.split('global.get $__asyncify_state').length - 1; }

describe('fast paths: which reads of the asyncify state fold to 0', () => {
  for (const c of CASES) {
    it(c.name, () => {
      const m = moduleWith(c.body);
      try {
        splitFastPaths(m, ['g', 'h', 'f'], ['ferry.safepoint']);
        assert.ok(m.validate(), 'the split module validates');
        const f = binaryen.emitText(binaryen.getFunctionInfo(m.getFunction('f')).body);
        const rewind = m.getFunction('f$rewind');
        if (c.kept === 'not split') { assert.equal(rewind, 0, 'no rewind path'); return; }
        assert.notEqual(rewind, 0, 'f has a rewind path');
        assert.equal(stateReads(binaryen.emitText(binaryen.getFunctionInfo(rewind).body)), stateReads(c.body), 'the rewind path is asyncify\'s body, unchanged');
        assert.equal(stateReads(f) - 1, c.kept, `reads kept in the fast path (besides the dispatch at entry):\n${f}`);
      } finally { m.dispose(); }
    });
  }
});

// A function with a safe point at entry dispatches on the stop flag (kept set through a
// rewind) instead of the state, and its fast body's reads of the flag before any call,
// loop or branch become 0. Cases: the body, and how many reads of the flag stay in the fast body.
const FLAG = `(i32.atomic.load offset=${STOP_FLAG} (i32.const 0))`;
const FLAG_CASES: { name: string; body: string; kept: number; byFlag: boolean }[] = [
  { name: 'the entry poll folds away', body: `(if ${FLAG} (then (call $g))) (drop ${S})`, kept: 0, byFlag: true },
  { name: 'a read after a call stays', body: `(drop ${FLAG}) (call $g) (drop ${FLAG})`, kept: 1, byFlag: true },
  { name: 'a read in a loop stays', body: `(drop ${FLAG}) (loop $l (br_if $l ${FLAG}))`, kept: 1, byFlag: true },
  { name: 'a read after a branch stays', body: `(drop ${FLAG}) (block $b (br_if $b (local.get 0)) (drop ${FLAG}))`, kept: 1, byFlag: true },
  { name: 'both arms of an if fold, and what follows them', body: `(if (local.get 0) (then (drop ${FLAG})) (else (drop ${FLAG}))) (drop ${FLAG})`, kept: 0, byFlag: true },
  { name: 'no read before the first call: the state dispatches', body: `(call $g) (drop ${FLAG})`, kept: 1, byFlag: false },
];

const countFlagReads = (wat: string): number => wat.match(new RegExp(`i32\\.atomic\\.load[^\\n]*offset=${STOP_FLAG}\\b`, 'g'))?.length ?? 0;

describe('fast paths of functions with a safe point at entry: dispatch on the stop flag', () => {
  for (const c of FLAG_CASES) {
    it(c.name, () => {
      const m = moduleWith(`${c.body} (drop ${S})`, true); // a read of the state: asyncify instrumented it
      try {
        splitFastPaths(m, ['g', 'h', 'f'], ['ferry.safepoint'], new Set(['f']));
        assert.ok(m.validate(), 'the split module validates');
        const f = binaryen.emitText(binaryen.getFunctionInfo(m.getFunction('f')).body);
        const flagReads = countFlagReads(f);
        const dispatch = f.split('\n').slice(0, 4).join('\n'); // (block (if (<condition>
        assert.ok(c.byFlag ? countFlagReads(dispatch) === 1 : stateReads(dispatch) === 1, `dispatch on the ${c.byFlag ? 'flag' : 'state'}:\n${f}`);
        assert.equal(flagReads - (c.byFlag ? 1 : 0), c.kept, `flag reads kept in the fast body:\n${f}`);
        const rewind = binaryen.emitText(binaryen.getFunctionInfo(m.getFunction('f$rewind')).body);
        assert.equal(countFlagReads(rewind), c.body.split('i32.atomic.load').length - 1, 'the rewind path keeps every read');
      } finally { m.dispose(); }
    });
  }
});

describe('fast paths in a prepared program', () => {
  it('recurse: every recursive function gets one, in every variant', () => {
    const bytes = readFileSync(join(ROOT, 'workloads', 'bin', 'recurse.wasm'));
    for (const variant of ['plain', 'tracked', 'faulting'] as const) {
      const p = prepareModule(bytes, variant);
      assert.ok((p.meta.stats.fastPaths ?? 0) >= p.meta.stats.entryPolls, `${variant}: ${p.meta.stats.fastPaths} fast paths, ${p.meta.stats.entryPolls} recursive functions`);
    }
  });
});
