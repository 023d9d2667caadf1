// Pre-faulting a fresh guest memory: the first write to each of its pages costs a
// page fault and the kernel zeroing the page (a bulk copy into a fresh memory ran at
// 200-2000 MB/s on these machines, a third of a warm one's speed or less). A
// migration's destination touches the range it expects during setup, while the
// process still runs on the source, so down time does not pay for it.

const STEP = 64 * 1024 * 1024; // bytes touched per turn of the event loop
const PAGE = 4096; // the kernel's page

/** Write one zero byte per kernel page of memory[0, bytes) (a fresh memory is all zero already).
 *  Yields to the event loop between steps; stops early if `live()` turns false. */
export async function prefault(memory: Uint8Array, bytes: number, live: () => boolean = () => true): Promise<void> {
  const end = Math.min(memory.length, Math.max(0, Math.floor(bytes)));
  for (let start = 0; start < end && live(); start += STEP) {
    const stop = Math.min(end, start + STEP);
    for (let o = start; o < stop; o += PAGE) memory[o] = 0;
    if (stop < end) await new Promise<void>((r) => setImmediate(r));
  }
}
