// Giving a departed guest's memory back to the system when it departs. A guest's memory
// is a SharedArrayBuffer; once its process has moved away or ended and its worker is
// gone, the buffer is freed only by a full garbage collection of the node's main thread,
// and an idle node may not run one for minutes: a node that had sent away a 1 GiB process
// still held 1.1 GiB, and one that had received and sent on two, 3.2 GiB. A node therefore
// asks V8 for a full collection once it has let a large guest memory go and then been quiet
// for a while: no other large guest left it for QUIET_MS and no migration is under way on it.
// Quiet, because a full collection stops the node's main thread for 30-70 ms (a heap of
// 42 MB here), which must never fall in a down time; and because memory freed at once is
// fresh memory for the next arrival, whose pages this VM hands out at ~11 us each: 64 MB
// migrations back and forth over plain TCP moved 1500 MB/s with the memory freed 0.1 s
// after each departure, against 1900 MB/s with it kept.
import v8 from 'node:v8';
import vm from 'node:vm';

/** Smaller memories are left to V8's own collections. */
export const RECLAIM_MIN_BYTES = 64 << 20;
/** How long a node waits after the last large departure. */
export const QUIET_MS = 5000;

let gc: (() => void) | null = null;
let busy: () => boolean = () => false;
let timer: NodeJS.Timeout | undefined;

/** Turn reclaiming on for this OS process (a node daemon does, at its start); `isBusy`: a
 *  collection now would stall work that must not wait (a migration). */
export function enableReclaim(isBusy: () => boolean): void {
  busy = isBusy;
  if (gc) return;
  v8.setFlagsFromString('--expose-gc');
  gc = vm.runInNewContext('gc') as () => void; // a context made after the flag has gc()
}

/** A guest memory of `bytes` bytes (unknown: any) was let go, and its worker has ended: collect
 *  once the node has been quiet for QUIET_MS (once for several departures). */
export function reclaimSoon(bytes = Infinity): void {
  if (!gc || bytes < RECLAIM_MIN_BYTES) return;
  clearTimeout(timer);
  const later = () => {
    timer = setTimeout(() => { if (busy()) later(); else { timer = undefined; gc!(); } }, QUIET_MS);
    timer.unref();
  };
  later();
}
