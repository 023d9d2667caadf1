// Shared helpers for the bench: statistics, formatting, workloads, running a ferry process.
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { loadPrepared, type LoadedModule } from '../src/vm/cache.ts';
import { loadProgram, type Program } from '../src/vm/snapshot.ts';
import { WasmProcess } from '../src/vm/process.ts';
import { initialWasiState } from '../src/wasi/host.ts';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const WORKLOAD_DIR = path.join(ROOT, 'workloads', 'bin');
export const wasmPath = (name: string): string => path.join(WORKLOAD_DIR, `${name}.wasm`);

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Nearest-rank percentile (p in 0..100). */
export function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

export function table(head: string[], rows: (string | number)[][]): string {
  const cells = [head, ...rows.map((r) => r.map(String))];
  const w = head.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join('  ');
  return [line(cells[0]!), w.map((n) => '-'.repeat(n)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

export const f1 = (x: number): string => (Number.isFinite(x) ? x.toFixed(1) : '-');
export const f2 = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : '-');
export const f3 = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : '-');

const prepared = new Map<string, { program: Program; loaded: LoadedModule }>();
/** The program and its prepared (transformed, compiled) module; transformed once, cached on disk. */
export async function prepare(name: string): Promise<{ program: Program; loaded: LoadedModule }> {
  let p = prepared.get(name);
  if (!p) {
    const program = loadProgram(wasmPath(name));
    const loaded = await loadPrepared(program.bytes, 'plain', program.hash);
    p = { program, loaded };
    prepared.set(name, p);
  }
  return p;
}

export interface FerryStartOptions {
  args: string[];
  preopens?: { host: string; guest: string }[];
  /** Keep stdout (else it is collected and discarded). */
  keepStdout?: boolean;
}

export interface FerryRun {
  proc: WasmProcess;
  program: Program;
  /** Resolves at the 'running' event (performance.now() then). */
  running: Promise<number>;
  stdout: Buffer[];
  stderr: Buffer[];
}

export async function startFerry(name: string, o: FerryStartOptions): Promise<FerryRun> {
  const { program, loaded } = await prepare(name);
  const wasi = initialWasiState({ args: [name, ...o.args], env: [], preopens: o.preopens ?? [] });
  const proc = WasmProcess.start(loaded, wasi, { stdin: null, stdio: 'message' });
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  proc.on('stdout', (d: Uint8Array) => { if (o.keepStdout) stdout.push(Buffer.from(d)); });
  proc.on('stderr', (d: Uint8Array) => { stderr.push(Buffer.from(d)); });
  const running = new Promise<number>((resolve, reject) => {
    proc.once('running', () => resolve(performance.now()));
    proc.exited.catch(reject);
  });
  running.catch(() => {});
  return { proc, program, running, stdout, stderr };
}
