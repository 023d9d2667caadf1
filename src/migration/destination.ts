// The migration engine, destination side: an incoming migration readies the
// module, memory and a worker during setup, writes pages as they arrive,
// checks the state, and runs the process only when the source commits.
//
// The destination decides the outcome once asked to commit: it either runs
// the process (and answers "running") or has aborted (and refuses). Before
// the commit, anything odd aborts: the source's connection closing, a
// malformed frame, no commit in time. A source that lost the commit's answer
// asks again (query): a migration still waiting for its commit is aborted
// then, so a late commit is refused and the process runs exactly once.
import { FerryError } from '../errors.ts';
import { decodeImage, type ProcessImage } from '../image/index.ts';
import { applyPageBatch, decodePageBatch, PageBatchWriter } from '../memory/page-batch.ts';
import { loadPrepared, type LoadedModule } from '../vm/cache.ts';
import { WASM_PAGE } from '../vm/layout.ts';
import { newGuestMemory, warmWorkers } from '../vm/process.ts';
import { checkResumable } from '../vm/snapshot.ts';
import { prefault } from '../memory/prefault.ts';

export type IncomingState = 'setup' | 'receiving' | 'ready' | 'running' | 'aborted';

/** How long a destination holds a ready process for its commit. */
export const COMMIT_TIMEOUT_MS = 60_000;

export interface IncomingSpec {
  id: string;
  pid: string;
  from: string;
  sha256: string;
  pageSize: number;
}

export class IncomingMigration {
  state: IncomingState = 'setup';
  memory: WebAssembly.Memory | null = null;
  loaded: LoadedModule | null = null;
  image: ProcessImage | null = null;
  pagesReceived = 0;
  reason: string | undefined;
  private maxPages = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(readonly spec: IncomingSpec, private readonly log?: (m: string) => void) {}

  /** Compile the module and ready a memory and a worker: all before the source freezes.
   *  `expectBytes`: the source's memory in use, pre-faulted here (0: none). */
  async setup(program: Uint8Array, expectBytes = 0): Promise<void> {
    const loaded = await loadPrepared(program, 'tracked', this.spec.sha256);
    if (this.state !== 'setup') throw this.refusal();
    this.loaded = loaded;
    this.memory = newGuestMemory();
    this.maxPages = (loaded.meta.maxPages * WASM_PAGE) / this.spec.pageSize;
    await prefault(new Uint8Array(this.memory.buffer), Math.min(expectBytes, loaded.meta.maxPages * WASM_PAGE), () => this.state === 'setup');
    if (this.state !== 'setup') throw this.refusal();
    await warmWorkers.prewarm();
    if (this.state !== 'setup') throw this.refusal();
    this.state = 'receiving';
  }

  /** A page batch: its body, or the writer that took it as it arrived (pageSink). */
  pages(body: Uint8Array, written?: unknown): void {
    if (this.state !== 'receiving') throw this.refusal('pages');
    if (written instanceof PageBatchWriter) written.end();
    else applyPageBatch(decodePageBatch(body, this.spec.pageSize, this.maxPages), new Uint8Array(this.memory!.buffer), this.spec.pageSize);
    this.pagesReceived++;
  }

  /** A writer for a page batch of `bodyLength` bytes, to apply it as it arrives (a transport
   *  body sink); undefined unless receiving (the batch is then buffered, and refused). */
  pageSink(bodyLength: number): PageBatchWriter | undefined {
    if (this.state !== 'receiving') return undefined;
    return new PageBatchWriter(new Uint8Array(this.memory!.buffer), this.spec.pageSize, this.maxPages, bodyLength);
  }

  /** The process state (an image whose pages came as batches). */
  acceptState(bytes: Uint8Array): ProcessImage {
    if (this.state !== 'receiving') throw this.refusal('state');
    const img = decodeImage(bytes, { source: `of migration ${this.spec.id}` });
    checkResumable(img);
    if (img.module.sha256 !== this.spec.sha256) throw new FerryError('bad-image', `migration ${this.spec.id}: state is of another module`);
    if (img.meta.pid !== this.spec.pid) throw new FerryError('bad-image', `migration ${this.spec.id}: state is of process ${img.meta.pid}, not ${this.spec.pid}`);
    this.image = img;
    this.state = 'ready';
    this.timer = setTimeout(() => this.abort(`no commit within ${COMMIT_TIMEOUT_MS} ms`), COMMIT_TIMEOUT_MS);
    this.timer.unref();
    return img;
  }

  /** Run it: `run` starts the process and resolves once it runs. */
  async commit(run: (m: IncomingMigration) => Promise<void>): Promise<void> {
    if (this.state !== 'ready') throw this.refusal('commit');
    clearTimeout(this.timer);
    this.state = 'running';
    try { await run(this); } catch (e) {
      this.state = 'aborted';
      this.reason = (e as Error).message;
      throw new FerryError('migration-aborted', `destination could not start ${this.spec.pid}: ${(e as Error).message}`, { cause: e });
    } finally { this.release(); }
  }

  /** Drop everything, unless it already runs. Returns whether it was aborted. */
  abort(reason: string): boolean {
    if (this.state === 'running' || this.state === 'aborted') return this.state === 'aborted';
    this.state = 'aborted';
    this.reason = reason;
    clearTimeout(this.timer);
    this.release();
    this.log?.(`incoming migration ${this.spec.id} of ${this.spec.pid} aborted: ${reason}`);
    return true;
  }

  private release(): void { this.memory = null; this.image = null; }

  private refusal(what?: string): FerryError {
    return new FerryError('migration-aborted', `migration ${this.spec.id} is ${this.state}${this.reason ? ` (${this.reason})` : ''}${what ? `: ${what} refused` : ''}`);
  }
}
