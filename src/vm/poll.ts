// The poll of the stop flag: how the transform reads the flag (prepare.ts, at loop headers and
// recursive functions' entries), and how a later pass (fast-path.ts) recognizes that read.
// One place for both, so they cannot drift apart.
import binaryen from 'binaryen';
import { b } from './ir.ts';
import { STOP_FLAG } from './layout.ts';

/** An atomic read of the stop flag: another thread sets it. */
export function readStopFlag(m: binaryen.Module): number {
  return m.i32.atomic.load(STOP_FLAG, m.i32.const(0));
}

/** Is `e` a read built by readStopFlag? */
export function isStopFlagRead(e: number): boolean {
  if (binaryen.getExpressionId(e) !== b.LoadId || !b.Load.isAtomic(e) || b.Load.getBytes(e) !== 4) return false;
  if ((b.Load.getOffset(e) >>> 0) !== STOP_FLAG) return false;
  const ptr = b.Load.getPtr(e);
  return binaryen.getExpressionId(ptr) === b.ConstId && b.Const.getValueI32(ptr) === 0;
}
