// Fast paths for the functions asyncify instruments.
//
// Asyncify makes one body serve three states, read from its state global: normal (0),
// unwinding (1: a safe point is capturing the stack, every frame saves its locals and
// returns) and rewinding (2: a resume re-enters every frame down to the safe point). Each
// stretch of code is guarded by checks of that state, which costs most in small functions
// called often: a recursion pays them on every call (issue 2's recurse workload).
//
// A rewind always starts from an empty stack, so a frame entered while the state is 0
// never sees 2, and sees 1 only once a call it made has begun to unwind. Each instrumented
// function F is therefore split in two:
//   - F$rewind: asyncify's body, unchanged; a rewind enters it;
//   - F: at entry, any state but 0 goes to F$rewind; then the same body, where every read
//     of the state this pass proves to be 0 becomes the constant 0, and the optimizer
//     folds the guards away. Reads that may see 1 (the checks after a call that can
//     unwind) stay, and with them the code that saves the frame.
// Both halves save the same values in the same order, so a stack unwound from either
// rewinds through F$rewind, and frames stay interchangeable between the variants.
//
// A function with a safe point at entry (a recursive one, prepare.ts) tests the stop flag
// instead of the state at entry: the runtime keeps the flag set for the whole of a rewind
// (src/vm/worker.ts), so a clear flag means state 0 and no stop asked. A set flag goes to
// F$rewind, which rewinds or reaches its own entry poll. The fast body's reads of the flag
// before any call, loop or branch read 0 then (a stop asked meanwhile is seen at the next
// poll, as if asked a moment later), and the optimizer drops the entry poll from it. One
// test at entry instead of two: recursions call these functions more than anything else.
//
// The proof is a forward pass over the structured body in evaluation order: the state is
// "clean" (0) at entry; a call that can unwind makes it "dirty" (0 or 1); a branch on
// the state (state == 1, state == 0, state) makes it clean again on the side where it
// cannot be 1. Branches join (dirty wins), a loop's head is walked again until it holds,
// code after an unconditional branch is unreachable. Anything the pass does not model
// (exceptions, branches on references) leaves the function as asyncify made it.
import binaryen from 'binaryen';
import { b, childSlots, classById, rewriteFunction, type Slot } from './ir.ts';
import { isStopFlagRead, readStopFlag } from './poll.ts';

const STATE = '__asyncify_state';

/** Dirty (true), clean (false), or unreachable (null). */
type Flow = boolean | null;
const join = (x: Flow, y: Flow): Flow => (x === null ? y : y === null ? x : x || y);

class Unsupported extends Error {}

/** How a condition on the state splits the flow: the state on its true and false sides. */
function refine(cond: number, d: Flow): [Flow, Flow] {
  if (d === null) return [null, null];
  const isState = (e: number) => binaryen.getExpressionId(e) === b.GlobalGetId && b.GlobalGet.getName(e) === STATE;
  const isConst = (e: number, v: number) => binaryen.getExpressionId(e) === b.ConstId && binaryen.getExpressionType(e) === binaryen.i32 && b.Const.getValueI32(e) === v;
  const id = binaryen.getExpressionId(cond);
  if (isState(cond)) return [d, false]; // state != 0 | state == 0
  if (id === b.UnaryId && b.Unary.getOp(cond) === binaryen.EqZInt32 && isState(b.Unary.getValue(cond))) return [false, d];
  if (id === b.BinaryId && b.Binary.getOp(cond) === binaryen.EqInt32) {
    const l = b.Binary.getLeft(cond), r = b.Binary.getRight(cond);
    if ((isState(l) && isConst(r, 1)) || (isState(r) && isConst(l, 1))) return [d, false]; // 1 | 0 (never 2 here)
    if ((isState(l) && isConst(r, 0)) || (isState(r) && isConst(l, 0))) return [false, d];
  }
  return [d, d];
}

/** Which reads of the state in `body` may see 1: the rest are 0. */
function dirtyReads(body: number, canUnwind: (callee: string) => boolean): Set<number> {
  const dirty = new Set<number>();
  const labels = new Map<string, Flow>();
  const toLabel = (name: string, d: Flow) => labels.set(name, join(labels.get(name) ?? null, d));
  const walk = (e: number, d: Flow): Flow => {
    const cls = classById.get(binaryen.getExpressionId(e));
    switch (cls) {
      case 'GlobalGet':
        if (b.GlobalGet.getName(e) === STATE && d) dirty.add(e);
        return d;
      case 'GlobalSet':
        if (b.GlobalSet.getName(e) === STATE) throw new Unsupported();
        return walk(b.GlobalSet.getValue(e), d);
      case 'Block': {
        const name = b.Block.getName(e) as string | null;
        if (name) labels.set(name, null);
        for (let i = 0; i < b.Block.getNumChildren(e); i++) d = walk(b.Block.getChildAt(e, i), d);
        return name ? join(d, labels.get(name)!) : d;
      }
      case 'Loop': {
        const name = b.Loop.getName(e) as string;
        let head = d, out: Flow = null;
        for (;;) {
          labels.set(name, null);
          out = walk(b.Loop.getBody(e), head);
          const next = join(d, labels.get(name)!);
          if (next === head) return out;
          head = next;
        }
      }
      case 'If': {
        const c = walk(b.If.getCondition(e), d);
        const [t, f] = refine(b.If.getCondition(e), c);
        const no = b.If.getIfFalse(e);
        return join(walk(b.If.getIfTrue(e), t), no ? walk(no, f) : f);
      }
      case 'Break': {
        const value = b.Break.getValue(e), cond = b.Break.getCondition(e);
        if (value) d = walk(value, d);
        if (!cond) { toLabel(b.Break.getName(e), d); return null; }
        d = walk(cond, d);
        const [taken, fall] = refine(cond, d);
        toLabel(b.Break.getName(e), taken);
        return fall;
      }
      case 'Switch': {
        const value = b.Switch.getValue(e);
        if (value) d = walk(value, d);
        d = walk(b.Switch.getCondition(e), d);
        for (let i = 0; i < b.Switch.getNumNames(e); i++) toLabel(b.Switch.getNameAt(e, i), d);
        toLabel(b.Switch.getDefaultName(e), d);
        return null;
      }
      case 'Return': {
        const value = b.Return.getValue(e);
        if (value) walk(value, d);
        return null;
      }
      case 'Unreachable': return null;
      case 'Call': {
        for (let i = 0; i < b.Call.getNumOperands(e); i++) d = walk(b.Call.getOperandAt(e, i), d);
        return d !== null && canUnwind(b.Call.getTarget(e)) ? true : d;
      }
      case 'CallIndirect': {
        for (let i = 0; i < b.CallIndirect.getNumOperands(e); i++) d = walk(b.CallIndirect.getOperandAt(e, i), d);
        d = walk(b.CallIndirect.getTarget(e), d);
        return d === null ? null : true;
      }
      case undefined: case 'Try': case 'Throw': case 'Rethrow': case 'BrOn':
        throw new Unsupported();
      default:
        // Every other class evaluates its children in the order childSlots lists them.
        for (const s of childSlots(e, cls)) d = walk(s.child, d);
        return d;
    }
  };
  walk(body, false);
  return dirty;
}

/** Does this body read the state, i.e. did asyncify instrument it? */
function readsState(body: number): boolean {
  const stack = [body];
  while (stack.length) {
    const e = stack.pop()!;
    const cls = classById.get(binaryen.getExpressionId(e));
    if (cls === 'GlobalGet' && b.GlobalGet.getName(e) === STATE) return true;
    if (cls) for (const s of childSlots(e, cls)) stack.push(s.child);
  }
  return false;
}

/** Replace by 0 every read of the stop flag that runs before any call, loop or branch
 *  (in evaluation order; an if's arms each from where its condition left off). Returns
 *  how many were replaced. */
function foldEarlyFlagReads(m: binaryen.Module, body: number, set: Slot): number {
  let folded = 0;
  const walk = (e: number, put: Slot, open: boolean): boolean => {
    if (!open) return false;
    const cls = classById.get(binaryen.getExpressionId(e));
    switch (cls) {
      case 'Call': case 'CallIndirect': case 'Loop': case 'Break': case 'Switch': case 'Return':
      case 'Unreachable': case 'Try': case 'Throw': case 'Rethrow': case 'BrOn': case undefined:
        return false;
      case 'Load':
        if (isStopFlagRead(e)) { put(m.i32.const(0)); folded++; return true; }
        return walk(b.Load.getPtr(e), (r) => b.Load.setPtr(e, r), true);
      case 'If': {
        if (!walk(b.If.getCondition(e), (r) => b.If.setCondition(e, r), true)) return false;
        const no = b.If.getIfFalse(e);
        const yes = walk(b.If.getIfTrue(e), (r) => b.If.setIfTrue(e, r), true);
        return (no ? walk(no, (r) => b.If.setIfFalse(e, r), true) : true) && yes;
      }
      default:
        for (const s of childSlots(e, cls)) if (!walk(s.child, s.set, true)) return false;
        return true;
    }
  };
  walk(body, set, true);
  return folded;
}

/** Split every function of `names` that asyncify instrumented into a fast path and its
 *  rewind path (see the top of this file). `asyncImports`: the imports that unwind.
 *  Run after asyncify and before the optimizer, which folds the constants. Returns how
 *  many functions were split. */
export function splitFastPaths(m: binaryen.Module, names: readonly string[], asyncImports: readonly string[],
  entryPolled: ReadonlySet<string> = new Set()): number {
  if (!m.getGlobal(STATE)) return 0;
  const instrumented = new Set(names.filter((n) => readsState(binaryen.getFunctionInfo(m.getFunction(n)).body)));
  const unwinds = new Set(asyncImports);
  for (let i = 0; i < m.getNumFunctions(); i++) {
    const f = binaryen.getFunctionInfo(m.getFunctionByIndex(i));
    if (f.module && unwinds.has(`${f.module}.${f.base}`)) instrumented.add(f.name);
  }
  const canUnwind = (callee: string) => instrumented.has(callee);
  let split = 0;
  for (const name of names) {
    if (!instrumented.has(name) || binaryen.getFunctionInfo(m.getFunction(name)).module) continue;
    const fn = m.getFunction(name);
    const info = binaryen.getFunctionInfo(fn);
    let dirty: Set<number>;
    try { dirty = dirtyReads(info.body, canUnwind); } catch (e) {
      if (e instanceof Unsupported) continue;
      throw e;
    }
    const rewind = `${name}$rewind`;
    m.addFunction(rewind, info.params, info.results, info.vars, m.copyExpression(info.body));
    rewriteFunction(fn, (e, cls) => (cls === 'GlobalGet' && b.GlobalGet.getName(e) === STATE && !dirty.has(e) ? m.i32.const(0) : undefined));
    const params = binaryen.expandType(info.params);
    const forward = m.call(rewind, params.map((t, i) => m.local.get(i, t)), info.results);
    const toRewind = info.results === binaryen.none ? m.block(null, [forward, m.return()]) : m.return(forward);
    let body = b.Function.getBody(fn); // (a read of the state at its root was replaced above)
    const byFlag = entryPolled.has(name) && foldEarlyFlagReads(m, body, (r) => { body = r; }) > 0;
    const dispatch = byFlag ? readStopFlag(m) : m.global.get(STATE, binaryen.i32);
    b.Function.setBody(fn, m.block(null, [m.if(dispatch, toRewind), body], info.results));
    split++;
  }
  return split;
}
