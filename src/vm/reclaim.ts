// Giving a departed guest's memory back to the system when it departs. A guest's memory
// is a SharedArrayBuffer; once its process has moved away or ended and its worker is
// gone, the buffer is freed only by a full garbage collection of the node's main thread,
// and an idle node may not run one for minutes: a node that had sent away a 1 GiB process
// still held 1.1 GiB, and one that had received and sent on two, 3.2 GiB. A node therefore
// asks V8 for a full collection shortly after a large guest memory is let go (the collection
// takes milliseconds; it runs outside any down time, after the process left).
import v8 from 'node:v8';
import vm from 'node:vm';

/** Smaller memories are left to V8's own collections. */
export const RECLAIM_MIN_BYTES = 64 << 20;
/** After the last reference to the memory is dropped (the caller's handlers run first). */
const DELAY_MS = 100;

let gc: (() => void) | null = null;
let timer: NodeJS.Timeout | undefined;

/** Turn reclaiming on for this OS process (a node daemon does, at its start). */
export function enableReclaim(): void {
  if (gc) return;
  v8.setFlagsFromString('--expose-gc');
  gc = vm.runInNewContext('gc') as () => void; // a context made after the flag has gc()
}

/** A guest memory of `bytes` bytes (unknown: any) was let go, and its worker has ended: collect
 *  soon (once for several at a time). */
export function reclaimSoon(bytes = Infinity): void {
  if (!gc || bytes < RECLAIM_MIN_BYTES || timer) return;
  timer = setTimeout(() => { timer = undefined; gc!(); }, DELAY_MS);
  timer.unref();
}
