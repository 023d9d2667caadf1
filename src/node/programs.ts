// The node's store of program (module) bytes, by sha256, in DATA_DIR/programs:
// the bytes come with each run request (the node the user contacted may not
// have the file) and stay here for later runs and for moving processes.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export class ProgramStore {
  private readonly dir: string;

  constructor(dataDir: string) {
    this.dir = join(dataDir, 'programs');
    mkdirSync(this.dir, { recursive: true });
  }

  private file(hash: string): string { return join(this.dir, `${hash}.wasm`); }

  has(hash: string): boolean { return /^[0-9a-f]{64}$/.test(hash) && existsSync(this.file(hash)); }

  get(hash: string): Uint8Array | undefined {
    if (!this.has(hash)) return undefined;
    try { return readFileSync(this.file(hash)); } catch { return undefined; }
  }

  put(hash: string, bytes: Uint8Array): void {
    if (this.has(hash)) return;
    const tmp = `${this.file(hash)}.${process.pid}.${Date.now()}.tmp`;
    try {
      writeFileSync(tmp, bytes);
      renameSync(tmp, this.file(hash));
    } catch { // a full or read-only disk only costs the cache (the bytes a process needs stay in memory)
      try { rmSync(tmp, { force: true }); } catch { /* read-only */ }
    }
  }
}
