// What a migration measured, in the thesis's terms (Fig. 2.1): preparation
// time (the process still runs on the source while pages move), down time (it
// runs nowhere), post-processing time (it runs on the destination while
// process information still moves), and bytes and pages per phase.
// Setup (connecting, fetching and compiling the module on the destination)
// comes before preparation and is reported apart: the thesis's processes had
// no such step, and it never adds to down time.
import type { MigrationState } from './state.ts';

export type Phase = 'preparation' | 'downtime' | 'postProcessing';

export type DowntimeEndedBy = 'host-clock' | 'answer';
/** The instant the process ran again on the destination, on the source's performance.now() clock. */
export interface DowntimeEnd { at: number; by: DowntimeEndedBy }

export interface MigrationMetrics {
  id: string;
  pid: string;
  from: string;
  to: string;
  algorithm: string;
  /** The algorithm's variant (demand paging: copy-on-reference or eager-dirty). */
  variant?: string;
  state: MigrationState;
  startedAt: string;
  setupMs: number | null;
  preparationMs: number | null;
  downtimeMs: number | null;
  postProcessingMs: number | null;
  /** preparation + down time + post-processing; null while a residual dependency remains. */
  totalMs: number | null;
  bytes: { setup: number; preparation: number; downtime: number; postProcessing: number; total: number };
  /** resent: sends of pages sent before (pre-copy's cost). */
  pages: { addressSpace: number; sent: number; zero: number; maxSendsPerPage: number; resent: number; pageSize: number };
  /** The source's shaped link rate (bytes/s x 8), null on an unshaped link. */
  linkBandwidthBps: number | null;
  /** Bytes sent after setup divided by the link's bandwidth; null on an unshaped link. */
  wireTimeMs: number | null;
  /** Bytes of the process's address space sent per ms while moving (after setup). */
  throughputBytesPerSec: number | null;
  /** Pre-copy rounds while the process ran. */
  rounds: number;
  /** Why the rounds ended (convergence.ts): nothing-pending, fits-downtime, rounds-exhausted,
   *  stalled; null without rounds (or when the switch to post-copy ended them). */
  roundsEnded: string | null;
  /** Bytes/s the process dirtied during the last round (pre-copy). */
  dirtyRateBytesPerSec: number | null;
  /** Auto-converge's last throttle (share of time the process slept). */
  throttle: number;
  /** --postcopy-after-rounds: the pre-copy did not converge and finished as a post-copy
   *  (down time carried the state alone; the rest was pushed or faulted in afterwards). */
  switchedToPostCopy: boolean;
  /** Post-copy: pages the destination fetched on first touch, their median round trip, and
   *  the time the process waited for them (the execution delay of thesis 5.3). */
  remoteFaults: number;
  faultRoundTripMs: number | null;
  executionDelayMs: number;
  /** Assisted post-copy: pages written after the pass (resent once each), and faults the
   *  source answered "not modified" (the destination's stored copy was current). */
  modifiedSincePass: number;
  notModifiedAnswers: number;
  /** Page batches (every phase) before and after compression (--compress): ratio = raw / wire. */
  compression: { codec: string; rawBytes: number; wireBytes: number; ratio: number | null };
  /** Nodes the process still depends on after the migration (until post-processing ends). */
  residualDependencies: string[];
  /** Flushing, freeze-free: the file server, the bytes and pages flushed to it (non-zero
   *  pages only), and ms from the freeze until every page was there (null until then). */
  fileServer: { node: string; bytes: number; pages: number; flushMs: number | null } | null;
  /** Where the down time went: ms from the freeze request to each step (frozen, pages, state, running). */
  downtimeSteps: Record<string, number>;
  /** How the source knows when the down time ended (node/downtime-end.ts): by the host's clock
   *  (nodes on one host: exact), or by the answer (its trip back counted); null before. */
  downtimeEndedBy: DowntimeEndedBy | null;
  error?: { code: string; message: string };
}

const now = (): number => performance.now();

/** Collects a migration's timings and counters as the engine goes. */
export class MetricsRecorder {
  readonly m: MigrationMetrics;
  private t0 = now();
  private phaseStart: Record<Phase | 'setup', number | null> = { setup: null, preparation: null, downtime: null, postProcessing: null };
  private sends: Uint8Array = new Uint8Array(0);

  constructor(init: { id: string; pid: string; from: string; to: string; algorithm: string; pageSize: number; linkBytesPerSec: number | null }) {
    this.m = {
      id: init.id, pid: init.pid, from: init.from, to: init.to, algorithm: init.algorithm, state: 'setup',
      startedAt: new Date().toISOString(),
      setupMs: null, preparationMs: null, downtimeMs: null, postProcessingMs: null, totalMs: null,
      bytes: { setup: 0, preparation: 0, downtime: 0, postProcessing: 0, total: 0 },
      pages: { addressSpace: 0, sent: 0, zero: 0, maxSendsPerPage: 0, resent: 0, pageSize: init.pageSize },
      linkBandwidthBps: init.linkBytesPerSec === null ? null : init.linkBytesPerSec * 8,
      wireTimeMs: null, throughputBytesPerSec: null, rounds: 0, roundsEnded: null, dirtyRateBytesPerSec: null, throttle: 0, switchedToPostCopy: false, downtimeSteps: {}, downtimeEndedBy: null,
      remoteFaults: 0, faultRoundTripMs: null, executionDelayMs: 0, modifiedSincePass: 0, notModifiedAnswers: 0, residualDependencies: [],
      compression: { codec: 'none', rawBytes: 0, wireBytes: 0, ratio: null }, fileServer: null,
    };
    this.phaseStart.setup = this.t0;
  }

  /** Start a phase (ending the one before). */
  begin(phase: Phase): void {
    const t = now();
    if (this.phaseStart.setup !== null && this.m.setupMs === null) this.m.setupMs = t - this.phaseStart.setup;
    if (phase === 'downtime' && this.phaseStart.preparation === null) this.m.preparationMs = 0;
    if (phase === 'downtime' && this.phaseStart.preparation !== null) this.m.preparationMs = t - this.phaseStart.preparation;
    if (phase === 'postProcessing' && this.phaseStart.downtime !== null) {
      // Post-processing begins where the down time ended (the process ran on the
      // destination), which may be before the source heard of it.
      if (this.m.downtimeMs === null) this.m.downtimeMs = t - this.phaseStart.downtime;
      this.phaseStart.postProcessing = this.phaseStart.downtime + this.m.downtimeMs;
      return;
    }
    this.phaseStart[phase] = t;
  }

  /** End of the migration (no more residual dependency). */
  end(): void {
    const t = now();
    if (this.phaseStart.postProcessing !== null) this.m.postProcessingMs = t - this.phaseStart.postProcessing;
    else if (this.phaseStart.downtime !== null) { this.m.downtimeMs ??= t - this.phaseStart.downtime; this.m.postProcessingMs = 0; }
    if (this.m.preparationMs === null) this.m.preparationMs = 0;
    const parts = [this.m.preparationMs, this.m.downtimeMs ?? 0, this.m.postProcessingMs ?? 0];
    this.m.totalMs = parts.reduce((a, b) => a + b, 0);
    this.finishBytes();
  }

  /** Down time ends when the destination runs the process (before post-processing, if any):
   *  `agoMs` before now, when the destination said how long it had run when it answered. */
  downtimeEnded(agoMs = 0): void {
    if (this.phaseStart.downtime !== null && this.m.downtimeMs === null) this.m.downtimeMs = now() - agoMs - this.phaseStart.downtime;
  }

  /** The process ran again on the destination at `end.at` (this clock): the down time's end. */
  ranAgain(end: DowntimeEnd): void {
    const ago = Math.max(0, now() - end.at);
    this.step('running', ago);
    this.downtimeEnded(ago);
    this.m.downtimeEndedBy = end.by;
  }

  /** Record a step of the down time (reached `agoMs` before now). */
  step(name: string, agoMs = 0): void {
    const t0 = this.phaseStart.downtime;
    if (t0 !== null) this.m.downtimeSteps[name] = Math.round((now() - agoMs - t0) * 100) / 100;
  }

  addBytes(phase: Phase | 'setup', n: number): void {
    this.m.bytes[phase] += n;
    this.m.bytes.total += n;
  }

  /** The address space in pages (sizes the per-page send counters). */
  setAddressSpace(pages: number): void {
    this.m.pages.addressSpace = pages;
    if (this.sends.length < pages) this.growCounters(pages);
  }

  /** Room for `pages` counters; doubling, since pre-copy sends before the address space is known
   *  (growing by one page at a time copied the counters once per page: seconds at 512 MB). */
  private growCounters(pages: number): void {
    const s = new Uint8Array(Math.max(pages, this.sends.length * 2));
    s.set(this.sends);
    this.sends = s;
  }

  pageSent(index: number): void {
    this.m.pages.sent++;
    if (index >= this.sends.length) this.growCounters(index + 1);
    const c = Math.min(255, this.sends[index]! + 1);
    if (c > 1) this.m.pages.resent++;
    this.sends[index] = c;
    if (c > this.m.pages.maxSendsPerPage) this.m.pages.maxSendsPerPage = c;
  }

  zeroPage(): void { this.m.pages.zero++; }

  /** ms since the freeze request (null before it). */
  sinceFreeze(): number | null {
    const t0 = this.phaseStart.downtime;
    return t0 === null ? null : now() - t0;
  }

  fail(error: { code: string; message: string }): void {
    this.m.error = error;
    this.finishBytes();
  }

  private finishBytes(): void {
    const moved = this.m.bytes.total - this.m.bytes.setup;
    const rate = this.m.linkBandwidthBps === null ? null : this.m.linkBandwidthBps / 8;
    this.m.wireTimeMs = rate ? (moved / rate) * 1000 : null;
    const ms = (this.m.preparationMs ?? 0) + (this.m.downtimeMs ?? 0) + (this.m.postProcessingMs ?? 0);
    this.m.throughputBytesPerSec = ms > 0 && moved > 0 ? (moved / ms) * 1000 : null;
  }

  snapshot(): MigrationMetrics { return structuredClone(this.m); }
}
