// Pre-faulting a fresh guest memory: the first write to each of its pages costs a
// page fault and the kernel zeroing the page (~10 us a page on these VMs). A
// migration's destination fills the range it expects during setup, while the
// process still runs on the source, so down time does not pay for it.
//
// Each page is written once from JavaScript and once by a kernel copy (a read of
// /dev/zero): measured on these VMs, the first write of either kind to a page is
// slow even when the other kind has written it before, and the destination's page
// bytes arrive by both: plain TCP reads are kernel copies, TLS decrypts into the
// page from user space. Bursts of 4 MiB read in place over loopback TCP into pages
// filled both ways took 0.7 ms, as into a reused buffer, against 5.0 ms into pages
// touched from JavaScript only; TLS bursts took the same time either way
// (bench/prefault.ts). Where /dev/zero cannot be read, the JavaScript write alone.
import { closeSync, openSync, readSync } from 'node:fs';

const STEP = 64 * 1024 * 1024; // bytes filled per turn of the event loop
const READ = 4 * 1024 * 1024; // bytes per read of /dev/zero
const PAGE = 4096; // the kernel's page

export type PrefaultMethod = 'kernel' | 'touch' | 'both';

/** Fill memory[0, bytes) with zeros (a fresh memory is all zero already), a step per turn of
 *  the event loop; stops early if `live()` turns false. `method`: 'both' (the default: a
 *  JavaScript write to each page, then reads of /dev/zero over it), 'kernel' (the reads alone)
 *  or 'touch' (the writes alone; also where /dev/zero cannot be opened). */
export async function prefault(memory: Uint8Array, bytes: number, live: () => boolean = () => true, method: PrefaultMethod = 'both'): Promise<void> {
  const end = Math.min(memory.length, Math.max(0, Math.floor(bytes)));
  if (end === 0) return;
  let zero: number | null = null;
  if (method !== 'touch') try { zero = openSync('/dev/zero', 'r'); } catch { /* not here: touch */ }
  try {
    for (let start = 0; start < end && live(); start += STEP) {
      const stop = Math.min(end, start + STEP);
      if (method === 'both' || zero === null) for (let o = start; o < stop; o += PAGE) memory[o] = 0;
      if (zero !== null) for (let o = start; o < stop;) o += readSync(zero, memory, o, Math.min(READ, stop - o), null) || stop - o;
      if (stop < end) await new Promise<void>((r) => setImmediate(r));
    }
  } finally { if (zero !== null) closeSync(zero); }
}
