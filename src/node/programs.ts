// The node's store of program (module) bytes, by sha256, in DATA_DIR/programs:
// the bytes come with each run request (the node the user contacted may not
// have the file) and stay here for later runs and for moving processes.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { putCacheFile } from '../vm/cache.ts';
import { makeDir } from '../dirs.ts';

export class ProgramStore {
  private readonly dir: string;

  constructor(dataDir: string) {
    this.dir = join(dataDir, 'programs');
    makeDir(this.dir, 'program store');
  }

  private file(hash: string): string { return join(this.dir, `${hash}.wasm`); }

  has(hash: string): boolean { return /^[0-9a-f]{64}$/.test(hash) && existsSync(this.file(hash)); }

  get(hash: string): Uint8Array | undefined {
    if (!this.has(hash)) return undefined;
    try { return readFileSync(this.file(hash)); } catch { return undefined; }
  }

  /** Best effort: a full or read-only disk costs only this store (a process's bytes stay in memory). */
  put(hash: string, bytes: Uint8Array): void {
    if (!this.has(hash)) putCacheFile(this.file(hash), bytes);
  }
}
