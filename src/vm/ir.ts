// Walking binaryen's IR from binaryen.js: the children of each expression class, reached
// through its class wrapper, each with a setter so a walk can replace it in place.
import binaryen from 'binaryen';
import { FerryError } from '../errors.ts';

/** binaryen.js's class wrappers (binaryen.Store.getPtr, ...), not all in its typings. */
export const b = binaryen as any;

/** How to reach each child of an expression: [field, arity]. Fields map to the
 *  class wrapper's getX/setX (one) or getNumXs/getXAt/setXAt (many). */
const CHILDREN: Record<string, [string, 'one' | 'many'][]> = {
  Block: [['Child', 'many']], If: [['Condition', 'one'], ['IfTrue', 'one'], ['IfFalse', 'one']],
  Loop: [['Body', 'one']], Break: [['Condition', 'one'], ['Value', 'one']],
  Switch: [['Condition', 'one'], ['Value', 'one']], Call: [['Operand', 'many']],
  CallIndirect: [['Target', 'one'], ['Operand', 'many']], LocalSet: [['Value', 'one']],
  GlobalSet: [['Value', 'one']], Load: [['Ptr', 'one']], Store: [['Ptr', 'one'], ['Value', 'one']],
  Unary: [['Value', 'one']], Binary: [['Left', 'one'], ['Right', 'one']],
  Select: [['IfTrue', 'one'], ['IfFalse', 'one'], ['Condition', 'one']], Drop: [['Value', 'one']],
  Return: [['Value', 'one']], MemoryGrow: [['Delta', 'one']],
  AtomicRMW: [['Ptr', 'one'], ['Value', 'one']],
  AtomicCmpxchg: [['Ptr', 'one'], ['Expected', 'one'], ['Replacement', 'one']],
  AtomicWait: [['Ptr', 'one'], ['Expected', 'one'], ['Timeout', 'one']],
  AtomicNotify: [['Ptr', 'one'], ['NotifyCount', 'one']], SIMDExtract: [['Vec', 'one']],
  SIMDReplace: [['Vec', 'one'], ['Value', 'one']], SIMDShuffle: [['Left', 'one'], ['Right', 'one']],
  SIMDTernary: [['A', 'one'], ['B', 'one'], ['C', 'one']], SIMDShift: [['Vec', 'one'], ['Shift', 'one']],
  SIMDLoad: [['Ptr', 'one']], SIMDLoadStoreLane: [['Ptr', 'one'], ['Vec', 'one']],
  MemoryInit: [['Dest', 'one'], ['Offset', 'one'], ['Size', 'one']],
  MemoryCopy: [['Dest', 'one'], ['Source', 'one'], ['Size', 'one']],
  MemoryFill: [['Dest', 'one'], ['Value', 'one'], ['Size', 'one']],
  TableGet: [['Index', 'one']], TableSet: [['Index', 'one'], ['Value', 'one']],
  TableGrow: [['Value', 'one'], ['Delta', 'one']], RefIsNull: [['Value', 'one']],
  RefAs: [['Value', 'one']], RefEq: [['Left', 'one'], ['Right', 'one']],
  Try: [['Body', 'one'], ['CatchBody', 'many']], Throw: [['Operand', 'many']],
  TupleMake: [['Operand', 'many']], TupleExtract: [['Tuple', 'one']],
  RefTest: [['Ref', 'one']], RefCast: [['Ref', 'one']], BrOn: [['Ref', 'one']],
};
const LEAVES = ['LocalGet', 'GlobalGet', 'Const', 'Nop', 'Unreachable', 'MemorySize', 'DataDrop',
  'AtomicFence', 'RefNull', 'RefFunc', 'TableSize', 'Pop', 'Rethrow'];

export const classById = new Map<number, string>();
for (const name of [...Object.keys(CHILDREN), ...LEAVES]) {
  const id = b[`${name}Id`];
  if (typeof id === 'number') classById.set(id, name);
}

export type Slot = (replacement: number) => void;

export function childSlots(expr: number, cls: string): { child: number; set: Slot }[] {
  const C = b[cls];
  const out: { child: number; set: Slot }[] = [];
  for (const [field, arity] of CHILDREN[cls] ?? []) {
    if (arity === 'one') {
      if (cls === 'Call' || (cls === 'CallIndirect' && field !== 'Target')) continue;
      const child = C[`get${field}`](expr);
      if (child) out.push({ child, set: (r) => C[`set${field}`](expr, r) });
    } else {
      const n = field === 'Child' ? C.getNumChildren(expr) : C[`getNum${field === 'CatchBody' ? 'CatchBodies' : field + 's'}`](expr);
      for (let i = 0; i < n; i++) {
        const child = C[`get${field}At`](expr, i);
        if (child) out.push({ child, set: (r) => C[`set${field}At`](expr, i, r) });
      }
    }
  }
  return out;
}

/** Every expression under `root`, each with its setter: where `visit` returns an expression,
 *  that replaces the visited one (whose children are then not visited). Iterative: real
 *  binaries nest deeper than the JS stack allows. */
export function rewrite(root: number, setRoot: Slot, visit: (e: number, cls: string) => number | undefined): void {
  const stack: { e: number; set: Slot }[] = [{ e: root, set: setRoot }];
  while (stack.length) {
    const { e, set } = stack.pop()!;
    const cls = classById.get(binaryen.getExpressionId(e));
    if (cls === undefined) throw new FerryError('unsupported-module', `unsupported instruction (binaryen expression id ${binaryen.getExpressionId(e)})`);
    const r = visit(e, cls);
    if (r !== undefined) { set(r); continue; }
    for (const c of childSlots(e, cls)) stack.push({ e: c.child, set: c.set });
  }
}

/** rewrite() over a function's body. */
export function rewriteFunction(fn: number, visit: (e: number, cls: string) => number | undefined): void {
  rewrite(b.Function.getBody(fn), (r) => b.Function.setBody(fn, r), visit);
}
