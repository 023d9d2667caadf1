// Copying bytes into or out of a guest memory. A guest memory is a SharedArrayBuffer
// (its worker thread runs on it), and V8 copies to or from one with relaxed atomic
// word moves (TypedArray.prototype.set, Buffer.copy): when source and target differ
// in alignment mod 8 it moves one byte at a time (2.4 GB/s here, against 12 GB/s
// aligned). Pages from a socket land at any alignment, the frame heads before them
// having any length; so a misaligned copy goes through a small ordinary buffer placed
// at the shared side's alignment: an ordinary memmove there, then an aligned word
// copy (8 GB/s). test/copy.test.ts checks every alignment; the loopback migrations
// of `npm run bench -- migrate` show the speed.

const STAGE = 64 * 1024;
const WORD = 8;
const stage = new Uint8Array(STAGE + WORD);
const SMALL = 512; // below this, the staging costs more than it saves

const isShared = (a: Uint8Array): boolean => typeof SharedArrayBuffer !== 'undefined' && a.buffer instanceof SharedArrayBuffer;

/** target.set(source, at), at memcpy speed whichever side is a shared (guest) memory. */
export function copyInto(target: Uint8Array, at: number, source: Uint8Array): void {
  const n = source.length;
  const intoShared = isShared(target), fromShared = isShared(source);
  if (n < SMALL || intoShared === fromShared || ((target.byteOffset + at - source.byteOffset) & (WORD - 1)) === 0) {
    target.set(source, at);
    return;
  }
  for (let o = 0; o < n; o += STAGE) {
    const k = Math.min(STAGE, n - o);
    // Place the piece in the stage at the shared side's alignment: that side's copy is then aligned.
    const sh = ((intoShared ? target.byteOffset + at + o : source.byteOffset + o) - stage.byteOffset) & (WORD - 1);
    stage.set(source.subarray(o, o + k), sh);
    target.set(stage.subarray(sh, sh + k), at + o);
  }
}
