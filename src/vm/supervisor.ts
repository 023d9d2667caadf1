// Orchestration on one node: runs a process and strings the primitives (freeze,
// capture, image, resume) into checkpoints (Condor's vacate), periodic checkpoints
// and hops (a migration to the same node through the whole path).
import { decodeImage, encodeImage, writeImageChunks } from '../image/index.ts';
import { imageFromCapture, resumeFromImage, type Program } from './snapshot.ts';
import type { LoadedModule } from './cache.ts';
import { warmWorkers, type WasmProcess, type Captured, type ProcessOptions } from './process.ts';
import { FerryError } from '../errors.ts';

/** HTCondor's exit code for "checkpointed, restart me". */
export const EXIT_CHECKPOINTED = 85;

export interface SuperviseOptions {
  pid: string;
  node: string;
  /** Image file for --vacate-after, --checkpoint-every and SIGTERM. */
  checkpoint?: string;
  vacateAfterMs?: number;
  checkpointEverySec?: number;
  hopEveryMs?: number;
  embedModule?: boolean;
  processOptions?: ProcessOptions;
  /** Told about each event (for --verbose and tests). */
  log?: (msg: string) => void;
  /** Told what failed without ending the program (an image not written): always shown. */
  warn?: (msg: string) => void;
}

export interface SuperviseResult {
  exitCode: number;
  checkpointed: boolean;
  hops: number;
  checkpoints: number;
  stopLatenciesMs: number[];
}

export class Supervisor {
  private proc: WasmProcess;
  private busy: Promise<void> = Promise.resolve();
  private timers: NodeJS.Timeout[] = [];
  /** A vacate could not write its image: the next SIGTERM ends the program. */
  private vacateFailed = false;
  private finished = false;
  private result: SuperviseResult = { exitCode: 0, checkpointed: false, hops: 0, checkpoints: 0, stopLatenciesMs: [] };
  private done!: (r: SuperviseResult) => void;
  private failed!: (e: Error) => void;
  readonly finishedPromise: Promise<SuperviseResult>;

  constructor(proc: WasmProcess, private readonly program: Program, private loaded: LoadedModule, private readonly opts: SuperviseOptions) {
    this.proc = proc;
    this.finishedPromise = new Promise((res, rej) => { this.done = res; this.failed = rej; });
    this.watch(proc);
    // Times count from when the program runs, not from when ferry started.
    proc.once('running', () => {
      if (this.finished) return;
      if (opts.vacateAfterMs !== undefined) this.after(opts.vacateAfterMs, () => this.vacate());
      if (opts.checkpointEverySec) this.every(opts.checkpointEverySec * 1000, () => this.checkpoint());
      if (opts.hopEveryMs) { warmWorkers.prewarm(); this.every(opts.hopEveryMs, () => this.hop()); }
    });
  }

  private after(ms: number, fn: () => void): void {
    this.timers.push(setTimeout(fn, ms));
  }

  /** Periods count from when the previous action finished, so a slow action cannot starve the program. */
  private every(ms: number, action: () => Promise<void>): void {
    this.after(ms, () => { void this.serial(action).then(() => { if (!this.finished) this.every(ms, action); }); });
  }

  private watch(proc: WasmProcess): void {
    proc.exited.then((code) => {
      if (proc !== this.proc) return;
      this.finish({ exitCode: code });
    }, (e: Error) => {
      if (proc !== this.proc || proc.state === 'killed') return;
      this.stopTimers();
      this.finished = true;
      this.failed(e);
    });
  }

  private finish(r: Partial<SuperviseResult>): void {
    if (this.finished) return;
    this.finished = true;
    this.stopTimers();
    Object.assign(this.result, r);
    this.done(this.result);
  }

  private stopTimers(): void { for (const t of this.timers) clearTimeout(t); this.timers = []; }

  /** One freeze at a time: actions queue behind each other. */
  private serial(action: () => Promise<void>): Promise<void> {
    this.busy = this.busy.then(async () => {
      if (this.finished) return;
      try { await action(); } catch (e) {
        if (this.finished) return;
        this.opts.log?.(`action failed: ${(e as Error).message}`);
        this.stopTimers();
        this.finished = true;
        void this.proc.kill();
        this.failed(e as Error);
      }
    });
    return this.busy;
  }

  /** Freeze; null if the program ended first. */
  private async freeze(): Promise<Captured | null> {
    const proc = this.proc;
    if (proc.state !== 'running' && proc.state !== 'starting') return null;
    try {
      const cap = await proc.freeze();
      this.result.stopLatenciesMs.push(cap.stopMs);
      return cap;
    } catch (e) {
      if ((proc.state as string) === 'exited') return null; // it ended before reaching a safe point
      throw e;
    }
  }

  private encode(cap: Captured, reason: 'checkpoint' | 'migration'): Buffer[] {
    return encodeImage(imageFromCapture(cap, this.program, { pid: this.opts.pid, node: this.opts.node, reason, embedModule: this.opts.embedModule }));
  }

  async checkpoint(): Promise<void> {
    if (!this.opts.checkpoint) throw new FerryError('bad-argument', 'no checkpoint file given');
    const cap = await this.freeze();
    if (!cap) return;
    try {
      await writeImageChunks(this.opts.checkpoint, this.encode(cap, 'checkpoint'));
      this.result.checkpoints++;
      this.opts.log?.(`checkpoint written to ${this.opts.checkpoint}`);
    } catch (e) {
      // No work lost for an image not written (a full disk): the program runs on, the next period tries again.
      this.opts.warn?.(`checkpoint not written, the program runs on: ${(e as Error).message}`);
    }
    this.proc.continue();
  }

  /** Write the image and end here with EXIT_CHECKPOINTED. */
  vacate(): Promise<void> {
    return this.serial(async () => {
      if (!this.opts.checkpoint) throw new FerryError('bad-argument', 'no checkpoint file given');
      const cap = await this.freeze();
      if (!cap) return;
      // It ends in this OS process: input it was given and has not read goes with it.
      const ahead = await this.proc.readStdinAhead(cap);
      try {
        await writeImageChunks(this.opts.checkpoint, this.encode(cap, 'checkpoint'));
      } catch (e) {
        // Ending it without its image would lose its work: it runs on here, its stdin given back;
        // the next SIGTERM ends it.
        ahead.giveBack();
        this.proc.continue();
        this.vacateFailed = true;
        const back = ahead.bytes ? ` (the ${ahead.bytes} bytes of stdin read ahead given back to it)` : '';
        this.opts.warn?.(`could not vacate, the program runs on${back}: ${(e as Error).message}; SIGTERM again ends it without an image`);
        return;
      }
      this.result.checkpoints++;
      this.opts.log?.(`vacated: image written to ${this.opts.checkpoint}${ahead.bytes ? ` (with ${ahead.bytes} bytes of stdin read ahead)` : ''}`);
      await this.proc.kill();
      this.finish({ exitCode: EXIT_CHECKPOINTED, checkpointed: true });
    });
  }

  /** Freeze, encode, decode, resume in a fresh worker and instance. */
  async hop(): Promise<void> {
    const cap = await this.freeze();
    if (!cap) return;
    const bytes = Buffer.concat(this.encode(cap, 'migration'));
    const img = decodeImage(bytes);
    const old = this.proc;
    const { proc } = await resumeFromImage(img, { ...this.opts.processOptions, loaded: this.loaded });
    await old.kill();
    this.proc = proc;
    this.watch(proc);
    await new Promise<void>((res) => { proc.once('running', res); proc.exited.then(() => res(), () => res()); });
    warmWorkers.prewarm();
    this.result.hops++;
    this.opts.log?.(`hop ${this.result.hops}: ${bytes.length} bytes, stop ${cap.stopMs.toFixed(2)} ms`);
  }

  /** SIGTERM: vacate if there is somewhere to write (and a vacate has not failed), else end the process. */
  async terminate(): Promise<void> {
    if (this.opts.checkpoint && !this.vacateFailed) return this.vacate();
    await this.serial(async () => {
      await this.proc.kill();
      this.finish({ exitCode: 143 });
    });
  }

  get current(): WasmProcess { return this.proc; }
}
