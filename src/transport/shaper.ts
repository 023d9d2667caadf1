// Link shaping for experiments: pace the bytes a node sends as if they crossed
// a link of a given bandwidth and one-way latency.
//
// Model: a virtual link clock. Sending n bytes occupies the link for n/rate
// seconds starting when the link is free (or now, if it is idle); the bytes are
// handed to the socket when they would have arrived: at the end of their
// serialization plus the one-way latency. Release times depend only on the link
// clock, never on when a timer happened to fire, so the long-run rate is exact
// even though Node's timers fire late by a millisecond or more: a late timer
// releases everything that is due at once. An idle link never accumulates a
// burst allowance (no token-bucket burst), as on a real wire.
//
// Writers call `reserve(n)` before queuing n bytes; it returns the release time
// and, when the link is booked more than `window` ahead, first waits, so that
// an urgent frame queued later is at most `window` behind (urgent frames jump
// the queue in the connection writer, but are paced too).
//
// One Shaper stands for one node's outgoing link: share it across the node's
// connections (listen() shares one across all accepted connections).

import { FerryError } from '../errors.ts';

/** Parse a bandwidth: '10mbit', '100mbit', '1gbit', '500kbit', '64kibit', '12.5MB/s', '1MiB/s', or a number of bytes/s. Returns bytes per second. */
export function parseBandwidth(spec: string | number): number {
  if (typeof spec === 'number') {
    if (!(spec > 0) || !Number.isFinite(spec)) throw new FerryError('bad-argument', `bandwidth must be a positive number of bytes per second, got ${spec}`);
    return spec;
  }
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z\/]*)\s*$/i.exec(spec);
  if (!m) throw new FerryError('bad-argument', `cannot parse bandwidth '${spec}' (use e.g. 10mbit, 100mbit, 1gbit, 500kbit, 12MB/s)`);
  const n = Number(m[1]);
  const unit = m[2];
  const bits: Record<string, number> = { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9, tbit: 1e12, kibit: 1024, mibit: 1024 ** 2, gibit: 1024 ** 3 };
  const prefix: Record<string, number> = { '': 1, k: 1e3, K: 1e3, M: 1e6, G: 1e9, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3 };
  const lower = unit.toLowerCase();
  const byteUnit = /^([kKMG]i?|)B\/s$/.exec(unit);
  let rate: number;
  if (unit === '') rate = n; // bytes per second
  else if (lower in bits) rate = (n * bits[lower]) / 8;
  else if (byteUnit && byteUnit[1] in prefix) rate = n * prefix[byteUnit[1]];
  else if (/^[kmgt]?bps$/i.test(unit)) throw new FerryError('bad-argument', `bandwidth unit '${unit}' is ambiguous (bits or bytes per second?): write ${lower.replace('bps', 'bit')} for bits or ${lower === 'bps' ? '' : lower[0].toUpperCase()}B/s for bytes`);
  else throw new FerryError('bad-argument', `unknown bandwidth unit '${unit}' in '${spec}' (use bit, kbit, mbit, gbit, or B/s, KB/s, MB/s, GB/s)`);
  if (!(rate > 0)) throw new FerryError('bad-argument', `bandwidth must be positive, got '${spec}'`);
  return rate;
}

/** Parse a one-way latency: '5ms', '0.5ms', '200us', '1s', or a number of milliseconds. Returns milliseconds. */
export function parseLatency(spec: string | number): number {
  if (typeof spec === 'number') {
    if (!(spec >= 0) || !Number.isFinite(spec)) throw new FerryError('bad-argument', `latency must be a non-negative number of milliseconds, got ${spec}`);
    return spec;
  }
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|us|µs|s|)\s*$/i.exec(spec);
  if (!m) throw new FerryError('bad-argument', `cannot parse latency '${spec}' (use e.g. 5ms, 0.5ms, 200us)`);
  const n = Number(m[1]);
  const unit = m[2].toLowerCase();
  return unit === 's' ? n * 1000 : unit === 'us' || unit === 'µs' ? n / 1000 : n;
}

export interface ShapingOptions {
  /** Link bandwidth: '100mbit' etc., or bytes/s. Unset = unlimited. */
  bandwidth?: string | number;
  /** Added one-way latency: '5ms' etc., or milliseconds. Unset = none. */
  latency?: string | number;
}

const now = (): number => performance.now();
/** Lateness of a backlogged sender that the link clock forgives (see reserve()). */
const CATCH_UP_MS = 100;

export class Shaper {
  /** Bytes per second, Infinity when unlimited. */
  readonly rate: number;
  /** One-way latency in ms. */
  readonly latency: number;
  /** How far ahead (ms) the link may be booked before reserve() waits. */
  readonly window: number;
  private linkFree = 0; // ms (performance.now clock) at which all booked bytes have been serialized

  constructor(opts: ShapingOptions) {
    this.rate = opts.bandwidth === undefined ? Infinity : parseBandwidth(opts.bandwidth);
    this.latency = opts.latency === undefined ? 0 : parseLatency(opts.latency);
    // Long enough to ride over timer lateness (a few ms on a busy machine) so the link stays busy.
    this.window = Number.isFinite(this.rate) ? Math.max(6, (2 * this.quantum / this.rate) * 1000) : 0;
  }

  static from(opts: Shaper | ShapingOptions | undefined): Shaper | undefined {
    if (!opts) return undefined;
    if (opts instanceof Shaper) return opts;
    if (opts.bandwidth === undefined && opts.latency === undefined) return undefined;
    return new Shaper(opts);
  }

  /** Bytes per slice handed to the link: about 2 ms of transmission, 1 KiB to 64 KiB. */
  get quantum(): number {
    if (!Number.isFinite(this.rate)) return 64 * 1024;
    return Math.min(64 * 1024, Math.max(1024, Math.round(this.rate * 0.002)));
  }

  /** Good size for bulk stream chunks on this link: about 4 ms of transmission, 4 KiB to 64 KiB (power of two). */
  get chunkSize(): number {
    if (!Number.isFinite(this.rate)) return 64 * 1024;
    const target = this.rate * 0.004;
    let c = 4096;
    while (c * 2 <= target && c < 64 * 1024) c *= 2;
    return c;
  }

  /**
   * Book n bytes on the link; resolves to the time (performance.now ms) at which they reach the peer.
   * `backlogged`: the caller had these bytes ready while the link was busy (it is writing a queue out),
   * so if the link went idle meanwhile it was the event loop's fault (a stall, a late timer), not the
   * sender's: the link clock then forgives up to CATCH_UP_MS of that lateness, keeping the average
   * rate exact on a busy machine at the cost of a short burst.
   */
  async reserve(n: number, backlogged = false): Promise<number> {
    if (!Number.isFinite(this.rate)) return now() + this.latency;
    let t = now();
    if (this.linkFree - t > this.window) {
      await sleep(this.linkFree - t - this.window);
      t = now();
    }
    const start = backlogged ? Math.max(t - CATCH_UP_MS, this.linkFree) : Math.max(t, this.linkFree);
    this.linkFree = start + (n / this.rate) * 1000;
    return this.linkFree + this.latency;
  }

  toString(): string {
    const bw = Number.isFinite(this.rate) ? `${((this.rate * 8) / 1e6).toFixed(3).replace(/\.?0+$/, '')} Mbit/s` : 'unlimited';
    return `${bw}, ${this.latency} ms`;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Per-socket delay line: holds paced slices until their release time, then
 * writes them to the socket in order. Timers may fire late; everything due is
 * written at once.
 */
export class DelayLine {
  private queue: { at: number; parts: readonly Uint8Array[]; length: number }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private waiters: (() => void)[] = [];
  private lowWaiters: { below: number; resolve: () => void }[] = [];
  /** Bytes held, not yet written to the socket. */
  pendingBytes = 0;

  /** `write` gets the due bytes as parts, to write in one go (no copy here: parts may be
   *  views of guest memory, which does not change while they wait). */
  constructor(private readonly write: (parts: readonly Uint8Array[]) => void) {}

  push(at: number, parts: readonly Uint8Array[]): void {
    let length = 0;
    for (const p of parts) length += p.length;
    this.queue.push({ at, parts, length });
    this.pendingBytes += length;
    if (this.queue.length === 1) this.flush();
  }

  /** Resolves once fewer than `below` bytes are held (bounds memory when only latency is shaped). */
  waitBelow(below: number): Promise<void> {
    if (this.pendingBytes < below) return Promise.resolve();
    return new Promise((resolve) => this.lowWaiters.push({ below, resolve }));
  }

  /** Resolves when everything queued so far has been written to the socket. */
  drained(): Promise<void> {
    if (this.queue.length === 0) return Promise.resolve();
    return new Promise((r) => this.waiters.push(r));
  }

  clear(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.queue = [];
    this.pendingBytes = 0;
    const w = this.waiters; this.waiters = [];
    for (const r of w) r();
    for (const l of this.lowWaiters.splice(0)) l.resolve();
  }

  private flush = (): void => {
    this.timer = undefined;
    const t = now();
    let i = 0;
    const due: Uint8Array[] = [];
    let length = 0;
    while (i < this.queue.length && this.queue[i]!.at <= t + 0.05) { const q = this.queue[i++]!; due.push(...q.parts); length += q.length; }
    if (i > 0) this.queue.splice(0, i);
    if (due.length > 0) {
      this.pendingBytes -= length;
      this.write(due);
      if (this.lowWaiters.length) {
        const still = this.lowWaiters.filter((l) => this.pendingBytes >= l.below);
        for (const l of this.lowWaiters) if (this.pendingBytes < l.below) l.resolve();
        this.lowWaiters = still;
      }
    }
    if (this.queue.length > 0) {
      this.timer = setTimeout(this.flush, Math.max(0, this.queue[0].at - t));
    } else {
      const w = this.waiters; this.waiters = [];
      for (const r of w) r();
    }
  };
}
