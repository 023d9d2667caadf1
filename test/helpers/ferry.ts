// Runs the real `ferry` command as a child process, as a user would.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const FERRY_BIN = join(ROOT, 'bin', 'ferry.js');
/** One prepared-module cache for the whole suite: each module is transformed once. */
export const TEST_CACHE = process.env.FERRY_CACHE_DIR ?? join(tmpdir(), 'ferry-test-cache');

export interface RunResult { stdout: Buffer; stderr: Buffer; exitCode: number; signal: NodeJS.Signals | null }

export function ferry(args: string[], opts: { stdin?: Uint8Array; cwd?: string; env?: Record<string, string>; timeoutMs?: number; onStart?: (pid: number) => void; onStdout?: (chunk: Buffer) => void } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FERRY_BIN, ...args], {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, FERRY_CACHE_DIR: TEST_CACHE, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [], err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => { out.push(d); opts.onStdout?.(d); });
    child.stderr.on('data', (d) => err.push(d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ stdout: Buffer.concat(out), stderr: Buffer.concat(err), exitCode: code ?? -1, signal });
    });
    child.stdin.on('error', () => {});
    child.stdin.end(opts.stdin ?? Buffer.alloc(0));
    if (child.pid) opts.onStart?.(child.pid);
  });
}

export function tempDir(prefix = 'ferry-test-'): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}
