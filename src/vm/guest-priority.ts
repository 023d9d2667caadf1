// The CPU priority of guests' threads. A node's main thread moves processes, carries
// their stdio and answers its peers; its guests' worker threads run their programs.
// With more busy guests than cores, the kernel shares the CPU equally among all these
// threads, so a migration's down time grew with the number of busy guests on its nodes.
// Guests therefore run nicer than their node (Linux nice values are per thread; a new
// thread inherits its creator's): the main thread gets the CPU when it needs it, and
// guests lose nothing on an idle machine. bench/crowded.ts (8 busy guests on 2 cores, all
// moved at once): down time p90 400 ms at the node's priority, 252 ten levels below; max
// 1160 and 374. It is a node's setting (`ferry node start --guest-nice`); a plain
// `ferry run` keeps its guest at its own priority.
import { getPriority, setPriority } from 'node:os';
import { FerryError } from '../errors.ts';

/** How much nicer than its node a node's guests run, unless told otherwise. */
export const DEFAULT_GUEST_NICE = 10;
export const MAX_NICE = 19;

let nice = 0;

/** Guests started from now on run `n` nicer than the thread that starts them (0..19). */
export function setGuestNice(n: number): void {
  if (!Number.isInteger(n) || n < 0 || n > MAX_NICE) throw new FerryError('bad-argument', `guest nice must be a whole number from 0 to ${MAX_NICE}, got ${n}`);
  nice = n;
}

export function guestNice(): number { return nice; }

/** In a guest's thread: run `n` nicer than now (a nicer thread may not become less nice again
 *  without privilege, so each guest thread is lowered once, at its start). */
export function lowerThisThread(n: number): void {
  if (!(n > 0)) return;
  try {
    setPriority(Math.min(MAX_NICE, getPriority() + n)); // pid 0: on Linux, this thread alone
  } catch { /* a system that refuses it: the guest runs at its node's priority */ }
}
