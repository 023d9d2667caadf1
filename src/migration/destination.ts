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
//
// Post-copy (spec.faulting): the process runs in the faulting variant with
// every page it has not received marked absent; a first touch faults and the
// page is fetched from the source (urgent class); pages the source pushes in
// the background are written only where still absent (a page the process has
// faulted in may have changed since). When the source has pushed everything
// (done), every page is present and the process moves to the tracked variant.
//
// Assisted post-copy (spec.temporaryStore): pages sent before the commit go to
// a temporary page store, not the memory; after the commit every page is
// absent. A fault's answer says which pages were "not modified" (taken from
// the store) and which are "in flight" (pushed already: wait for them). A
// pushed page makes its stored copy stale. When the source is done, every page
// still absent is current in the store (or zero) and moves in from there.
import { FerryError } from '../errors.ts';
import { decodeImage, type ProcessImage } from '../image/index.ts';
import { applyPageBatch, decodePageBatch, PageBatchWriter, type PageBatch } from '../memory/page-batch.ts';
import { ABSENT_MAP, TRACK_PAGE } from '../vm/layout.ts';
import { loadPrepared, type LoadedModule } from '../vm/cache.ts';
import { WASM_PAGE } from '../vm/layout.ts';
import { newGuestMemory, PreparedWorker, warmWorkers } from '../vm/process.ts';
import { checkResumable } from '../vm/snapshot.ts';
import { prefault } from '../memory/prefault.ts';
import { copyInto } from '../memory/copy.ts';
import { PageStore } from '../memory/page-store.ts';

export type IncomingState = 'setup' | 'receiving' | 'ready' | 'running' | 'aborted';

/** How long a destination holds a ready process for its commit. */
export const COMMIT_TIMEOUT_MS = 60_000;
/** How long a fault waits for a page the source says it has pushed. */
const FAULT_WAIT_MS = 30_000;

/** A fault waiting for a page in flight: settles it (with the reason it never came, if lost). */
interface Waiter { done: (lost?: string) => void; timer: ReturnType<typeof setTimeout> }

export interface IncomingSpec {
  id: string;
  pid: string;
  from: string;
  sha256: string;
  pageSize: number;
  /** Resume in the faulting variant, pages fetched on first touch (post-copy, demand paging). */
  faulting?: boolean;
  /** A pre-copy that may switch to post-copy at its commit: load the faulting variant too. */
  mayPostCopy?: boolean;
  /** No push: the source serves pages until the process ends or has them all (demand paging). */
  residual?: boolean;
  /** Pages before the commit go to a temporary page store (assisted post-copy). */
  temporaryStore?: boolean;
  /** The node serving the pages, if not the source (flushing: the file server). */
  holder?: string;
}

/** A fault's answer: the pages sent, and (assisted post-copy) pages whose stored copy is
 *  current and pages on their way in the push. */
export type FaultAnswer = PageBatch & { notModified?: readonly number[]; inFlight?: readonly number[] };

/** Remote faults seen by the destination (thesis 5.3: execution delay). */
export interface FaultStats { remoteFaults: number; faultRoundTripMs: number | null; executionDelayMs: number; notModifiedAnswers?: number }

export class IncomingMigration {
  state: IncomingState = 'setup';
  memory: WebAssembly.Memory | null = null;
  /** The module it runs in once every page is here (the plain variant); null before setup. */
  loaded: LoadedModule | null = null;
  /** Resolves to `loaded`: a faulting migration starts in the faulting variant and compiles
   *  this one meanwhile, for when its last page arrives. */
  steady: Promise<LoadedModule> | null = null;
  /** The faulting variant (post-copy), loaded during setup. */
  faultingModule: LoadedModule | null = null;
  image: ProcessImage | null = null;
  /** The program's bytes, kept from setup: the commit reads nothing from disk (a cache write
   *  that failed on a full disk costs nothing then, and a read costs the down time). */
  program: Uint8Array | null = null;
  /** A worker with the module instantiated over `memory` (made at setup's end), for the commit. */
  prepared: PreparedWorker | null = null;
  /** Migration pages received (1) so far. */
  private received = new Uint8Array(0);
  private readonly faultTimes: number[] = [];
  private faultWaitMs = 0;
  private notModified = 0;
  /** Assisted post-copy: the pages of the pass, until they move in or go stale. */
  readonly store: PageStore | null;
  /** Faults waiting for pages in flight (assisted post-copy), by page. */
  private readonly waiting = new Map<number, Waiter[]>();
  pagesReceived = 0;
  reason: string | undefined;
  private maxPages = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(readonly spec: IncomingSpec, private readonly log?: (m: string) => void) {
    this.store = spec.temporaryStore ? new PageStore(spec.pageSize) : null;
  }

  /** Compile the module and ready a memory and a worker: all before the source freezes.
   *  `expectBytes`: the source's memory in use, pre-faulted here (0: none). */
  async setup(program: Uint8Array, expectBytes = 0): Promise<void> {
    this.program = program;
    // Side by side: compiling (V8 does it on its own threads) and loading a worker's code.
    // A faulting migration resumes in the faulting variant: the plain one (compiled eagerly, hundreds
    // of ms) is needed only once every page is here, so it is not waited for.
    const warm = warmWorkers.prewarm();
    this.steady = loadPrepared(program, 'plain', this.spec.sha256);
    this.steady.then((m) => { this.loaded = m; }, () => {});
    const faulting = this.spec.faulting || this.spec.mayPostCopy ? loadPrepared(program, 'faulting', this.spec.sha256) : null;
    if (!this.spec.faulting) await this.steady; // a pre-copy that may switch to post-copy needs both
    this.faultingModule = await faulting;
    const loaded = this.faultingModule ?? (await this.steady);
    if (this.state !== 'setup') throw this.refusal();
    this.memory = newGuestMemory();
    this.maxPages = (loaded.meta.maxPages * WASM_PAGE) / this.spec.pageSize;
    await prefault(new Uint8Array(this.memory.buffer), Math.min(expectBytes, loaded.meta.maxPages * WASM_PAGE), () => this.state === 'setup');
    if (this.state !== 'setup') throw this.refusal();
    await warm;
    if (this.state !== 'setup') throw this.refusal();
    // The variant it will run in is known (unless a pre-copy may switch to post-copy at its
    // commit): instantiate it now, so the commit sends the worker only the state.
    // Ready means ready: a commit that finds the worker still instantiating (a fresh worker
    // takes a few ms) would wait for it in the down time.
    if (!this.spec.mayPostCopy) {
      this.prepared = new PreparedWorker(loaded, this.memory);
      await this.prepared.settled;
      if (this.state !== 'setup') throw this.refusal();
    }
    this.state = 'receiving';
  }

  /** A page batch: its body, or the writer that took it as it arrived (pageSink). */
  pages(body: Uint8Array, written?: unknown): void {
    if (this.state !== 'receiving') throw this.refusal('pages');
    if (this.store) { this.toStore(decodePageBatch(body, this.spec.pageSize, this.maxPages)); this.pagesReceived++; return; }
    let carried: { indices: Uint32Array; zero: Uint32Array };
    if (written instanceof PageBatchWriter) { written.end(); carried = written.carried; } else {
      const batch = decodePageBatch(body, this.spec.pageSize, this.maxPages);
      applyPageBatch(batch, new Uint8Array(this.memory!.buffer), this.spec.pageSize);
      carried = batch;
    }
    this.mark(carried.indices); this.mark(carried.zero);
    this.pagesReceived++;
  }

  /** Assisted post-copy's pass: pages kept aside, none present in the memory. */
  private toStore(batch: PageBatch): void {
    const ps = this.spec.pageSize;
    for (let k = 0; k < batch.indices.length; k++) this.store!.put(batch.indices[k]!, batch.data.subarray(k * ps, (k + 1) * ps));
    for (const p of batch.zero) this.store!.drop(p);
  }

  private mark(indices: Uint32Array): void {
    for (const i of indices) {
      if (i >= this.received.length) { const r = new Uint8Array(Math.max(i + 1, this.received.length * 2, 1024)); r.set(this.received); this.received = r; }
      this.received[i] = 1;
    }
  }

  isPresent(page: number): boolean { return page < this.received.length && this.received[page] === 1; }

  /** At commit (post-copy): mark every page of the address space not received absent. */
  markAbsent(logicalBytes: number): number {
    const mem = new Uint8Array(this.memory!.buffer);
    const per = this.spec.pageSize / TRACK_PAGE;
    const pages = Math.ceil(logicalBytes / this.spec.pageSize);
    let n = 0;
    // One fill per run of absent pages (in the down time: a call per page cost ms at 256 MB).
    for (let p = 0; p < pages;) {
      if (this.isPresent(p)) { p++; continue; }
      let q = p + 1;
      while (q < pages && !this.isPresent(q)) q++;
      mem.fill(1, ABSENT_MAP + p * per, ABSENT_MAP + q * per);
      n += q - p;
      p = q;
    }
    this.totalPages = pages;
    this.absent = n;
    return n;
  }
  private totalPages = 0;
  /** Pages still absent (post-copy). */
  absent = 0;

  /** After commit (post-copy): pages pushed or fetched; written only where still absent. */
  postPages(batch: PageBatch): void {
    if (!this.memory) return; // finished: every page is here (a fault's late answer)
    const mem = new Uint8Array(this.memory.buffer);
    const ps = this.spec.pageSize, per = ps / TRACK_PAGE;
    const take = (p: number, bytes: Uint8Array | null) => {
      this.store?.drop(p); // a newer copy than the pass's
      if (this.isPresent(p) || p >= this.totalPages) return;
      if (bytes) copyInto(mem, p * ps, bytes); else mem.fill(0, p * ps, (p + 1) * ps);
      this.mark(Uint32Array.of(p));
      mem.fill(0, ABSENT_MAP + p * per, ABSENT_MAP + (p + 1) * per); // present from now on
      this.absent--;
      this.wake(p);
    };
    for (let k = 0; k < batch.indices.length; k++) take(batch.indices[k]!, batch.data.subarray(k * ps, (k + 1) * ps));
    for (const p of batch.zero) take(p, null);
  }

  /** A remote fault on [addr, addr+len): fetch the absent pages it spans. */
  async fault(addr: number, len: number, fetch: (pages: number[]) => Promise<FaultAnswer>): Promise<void> {
    const ps = this.spec.pageSize;
    const want: number[] = [];
    for (let p = Math.floor(addr / ps); p <= Math.floor((addr + Math.max(1, len) - 1) / ps); p++) if (!this.isPresent(p)) want.push(p);
    if (!want.length) return;
    const t0 = performance.now();
    await this.applyAnswer(await fetch(want));
    const ms = performance.now() - t0;
    this.faultTimes.push(ms);
    this.faultWaitMs += ms;
  }

  /** Apply a fault's (or a pull's) answer: the pages sent; (assisted post-copy) the stored copy of
   *  pages not modified since the pass; and wait for pages already on their way in the push. */
  async applyAnswer(answer: FaultAnswer): Promise<void> {
    this.postPages(answer);
    for (const p of answer.notModified ?? []) { this.fromStore(p); this.notModified++; }
    await Promise.all((answer.inFlight ?? []).map((p) => this.arrival(p)));
  }

  /** Pages of the address space still absent (post-copy, demand paging), at most `max`. */
  absentPages(max = Infinity): number[] {
    const out: number[] = [];
    if (!this.memory) return out;
    for (let p = 0; p < this.totalPages && out.length < max; p++) if (!this.isPresent(p)) out.push(p);
    return out;
  }

  /** One bit per page of the address space, set where the page is still absent (a resumed push sends those). */
  absentBitmap(): Uint8Array {
    const bits = new Uint8Array(Math.ceil(this.totalPages / 8));
    if (this.memory) for (let p = 0; p < this.totalPages; p++) if (!this.isPresent(p)) bits[p >> 3] = bits[p >> 3]! | (1 << (p & 7));
    return bits;
  }

  faultStats(): FaultStats {
    const t = [...this.faultTimes].sort((a, b) => a - b);
    return { remoteFaults: t.length, faultRoundTripMs: t.length ? t[Math.floor(t.length / 2)]! : null, executionDelayMs: this.faultWaitMs, ...(this.store ? { notModifiedAnswers: this.notModified } : {}) };
  }

  /** Assisted post-copy: the source says page p was not modified since the pass: the stored
   *  copy is current (no stored copy: it was a zero page, elided by the pass). */
  private fromStore(p: number): void {
    if (!this.memory || this.isPresent(p) || p >= this.totalPages) return;
    const mem = new Uint8Array(this.memory.buffer);
    const ps = this.spec.pageSize, per = ps / TRACK_PAGE;
    if (!this.store?.take(p, mem, p * ps)) mem.fill(0, p * ps, (p + 1) * ps);
    this.mark(Uint32Array.of(p));
    mem.fill(0, ABSENT_MAP + p * per, ABSENT_MAP + (p + 1) * per);
    this.absent--;
    this.wake(p);
  }

  /** Resolves once page p is present (a page in flight in the push). */
  private arrival(p: number): Promise<void> {
    if (!this.memory || this.isPresent(p) || p >= this.totalPages) return Promise.resolve();
    return new Promise((res, rej) => {
      const lost = (why: string) => new FerryError('pages-lost', `process ${this.spec.pid} needs page ${p}, held by node ${this.spec.from}, which pushed it but ${why}`);
      const w: Waiter = {
        done: (why) => { clearTimeout(w.timer); if (why) rej(lost(why)); else res(); },
        timer: setTimeout(() => w.done(`it did not arrive in ${FAULT_WAIT_MS} ms`), FAULT_WAIT_MS),
      };
      const list = this.waiting.get(p) ?? [];
      list.push(w);
      this.waiting.set(p, list);
    });
  }

  private wake(p: number): void {
    const list = this.waiting.get(p);
    if (!list) return;
    this.waiting.delete(p);
    for (const w of list) w.done();
  }

  /** The source's connection is gone. With `graceMs` (post-processing: the source re-dials and
   *  pushes again what it lost) faults waiting for pushed pages wait that long more; else they fail now. */
  sourceLost(why: string, graceMs?: number): void {
    for (const list of this.waiting.values()) for (const w of list) {
      if (graceMs === undefined) { w.done(why); continue; }
      clearTimeout(w.timer);
      w.timer = setTimeout(() => w.done(`${why} and it did not come back within ${Math.round(graceMs / 1000)} s`), graceMs);
    }
    if (graceMs === undefined) this.waiting.clear();
  }

  /** Post-processing is over: every page is here (the caller swaps variants), memory let go.
   *  Assisted post-copy: every page still absent was not modified since the pass: it moves in
   *  from the store now. */
  finish(): void {
    if (this.store && this.memory) for (let p = 0; p < this.totalPages; p++) if (!this.isPresent(p)) this.fromStore(p);
    this.store?.clear();
    if (this.absent > 0) throw new FerryError('migration-failed', `migration ${this.spec.id}: ${this.absent} pages still absent after the source finished`);
    this.memory = null;
    this.image = null;
  }

  /** A writer for a page batch of `bodyLength` bytes, to apply it as it arrives (a transport
   *  body sink); undefined unless receiving (the batch is then buffered, and refused). */
  pageSink(bodyLength: number): PageBatchWriter | undefined {
    if (this.state !== 'receiving' || this.store) return undefined; // a store takes the whole batch // after commit, pushed pages are checked page by page
    return new PageBatchWriter(new Uint8Array(this.memory!.buffer), this.spec.pageSize, this.maxPages, bodyLength);
  }

  /** The commit of a pre-copy switched to post-copy: the pages set in `stale` (a bitmap) were
   *  written on the source since they came; they count as not received, so the commit marks
   *  them absent with every page that never came, and they are faulted in or pushed. */
  switchToPostCopy(stale: Uint8Array): void {
    if (this.state !== 'receiving') throw this.refusal('post-copy switch');
    if (!this.faultingModule) throw new FerryError('bad-request', `migration ${this.spec.id}: post-copy switch, but MIG_SETUP did not ask for the faulting variant`);
    if (stale.length * 8 > this.maxPages + 8) throw new FerryError('bad-request', `migration ${this.spec.id}: stale-page map of ${stale.length} bytes is larger than the address space`);
    const upTo = Math.min(stale.length * 8, this.received.length);
    for (let p = 0; p < upTo; p++) if (stale[p >> 3]! & (1 << (p & 7))) this.received[p] = 0;
    this.spec.faulting = true;
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
    } finally { if (!this.spec.faulting || this.state === 'aborted') this.release(); }
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

  /** Let go of the memory (the process has its own reference), the image and the temporary store. */
  release(): void {
    this.memory = null; this.image = null; this.program = null; this.store?.clear();
    this.prepared?.discard(); // unless the process took it over
    this.prepared = null;
  }

  private refusal(what?: string): FerryError {
    return new FerryError('migration-aborted', `migration ${this.spec.id} is ${this.state}${this.reason ? ` (${this.reason})` : ''}${what ? `: ${what} refused` : ''}`);
  }
}
