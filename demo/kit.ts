// The demo's kit: every step a real `ferry` command in its own OS process, bounded
// in time; node daemons; printing; and a cleanup that ends every child whatever happens.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
const FERRY = join(ROOT, 'bin', 'ferry.js');
export const WORK = mkdtempSync(join(tmpdir(), 'ferry-demo-'));
export const T0 = performance.now();

export interface Result { stdout: Buffer; stderr: string; code: number; ms: number; timedOut: boolean }
export interface FerryOptions {
  env?: Record<string, string>;
  /** SIGKILL the command after this long (every call is bounded). */
  timeoutMs?: number;
  /** Called with each complete line of stdout as it arrives. */
  onLine?: (line: string) => void;
}

/** Every child process the demo started and that has not ended yet. */
const children = new Set<ChildProcess>();

function track(child: ChildProcess): Promise<void> {
  children.add(child);
  return new Promise((r) => child.once('exit', () => { children.delete(child); r(); }));
}

/** A failed step: what failed, and what it said on stderr. */
export class DemoError extends Error {
  constructor(message: string, readonly detail = '') { super(message); }
}

/** After Ctrl-C nothing new starts and nothing that ends continues the demo: cleanup() owns the end. */
let interrupted = false;
const never = new Promise<never>(() => {});

export function ferry(args: string[], opts: FerryOptions = {}): Promise<Result> {
  if (interrupted) return never;
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FERRY, ...args], { cwd: ROOT, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    void track(child);
    const out: Buffer[] = [], err: Buffer[] = [];
    let partial = '';
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL'); }, opts.timeoutMs ?? 120_000);
    child.stdout.on('data', (d: Buffer) => {
      out.push(d);
      if (!opts.onLine || interrupted) return;
      const lines = (partial + d.toString()).split('\n');
      partial = lines.pop()!;
      for (const l of lines) opts.onLine(l);
    });
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (interrupted) return;
      if (opts.onLine && partial) opts.onLine(partial);
      resolve({ stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString(), code: code ?? (signal ? 128 : -1), ms: performance.now() - t0, timedOut });
    });
  });
}

export const say = (s = '') => process.stdout.write(s + '\n');
const tty = process.stdout.isTTY;
export const dim = (s: string) => (tty ? `\x1b[2m${s}\x1b[0m` : s);
export const bold = (s: string) => (tty ? `\x1b[1m${s}\x1b[0m` : s);
export const quote = (a: string) => (/[\s"'$]/.test(a) ? JSON.stringify(a) : a);
export const show = (cmd: string[], prefix = '') => say(dim(`${prefix}$ ferry ${cmd.map(quote).join(' ')}`));
export const indent = (s: string, by = '    ') => s.replace(/\n$/, '').split('\n').map((l) => by + l).join('\n');
export const elapsed = () => `${((performance.now() - T0) / 1000).toFixed(1).padStart(5)} s`;

/** Run a ferry command that must succeed; otherwise fail the demo with its stderr. */
export async function must(args: string[], opts: FerryOptions = {}): Promise<Result> {
  const r = await ferry(args, opts);
  if (r.code !== 0 || r.timedOut) {
    throw new DemoError(`\`ferry ${args.map(quote).join(' ')}\` ${r.timedOut ? `did not finish within ${((opts.timeoutMs ?? 120_000) / 1000).toFixed(0)} s` : `exited with code ${r.code}`}`,
      r.stderr || r.stdout.toString());
  }
  return r;
}

export function printTable(head: string[], rows: string[][], rightAlign: boolean[] = []): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => '  ' + r.map((c, i) => (rightAlign[i] ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd();
  say(line(head));
  say(line(widths.map((w) => '-'.repeat(w))));
  for (const r of rows) say(line(r));
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Poll fn until it returns a value, for at most timeoutMs (every wait of the demo is bounded). */
export async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined>, everyMs = 250): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (performance.now() > deadline) throw new DemoError(`timed out after ${(timeoutMs / 1000).toFixed(0)} s waiting for ${what}`);
    await sleep(everyMs);
  }
}

// ---------------------------------------------------------------------------
// Node daemons

export interface Daemon { name: string; addr: string; child: ChildProcess; exited: Promise<void>; log: () => string }
export const daemons: Daemon[] = [];

/** `ferry node start` as its own OS process; resolves once it prints "listening on HOST:PORT". */
export function startNode(name: string, keyFile: string, dataDir: string, join?: string, extra: string[] = []): Promise<Daemon> {
  if (interrupted) return never;
  const args = ['node', 'start', '--name', name, '--listen', '127.0.0.1:0', '--key-file', keyFile, '--data-dir', dataDir, ...(join ? ['--join', join] : []), ...extra];
  show(args, '  ');
  const child = spawn(process.execPath, [FERRY, ...args], { cwd: ROOT, env: { ...process.env, FERRY_KEY_FILE: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = track(child);
  let out = '', err = '';
  child.stderr!.on('data', (d) => { err += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new DemoError(`node ${name} did not print "listening on" within 30 s`, err)), 30_000);
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /listening on (\S+)/.exec(out);
      if (m && !interrupted) {
        clearTimeout(timer);
        const d: Daemon = { name, addr: m[1], child, exited, log: () => err };
        daemons.push(d);
        resolve(d);
      }
    });
    void exited.then(() => { clearTimeout(timer); if (!interrupted) reject(new DemoError(`node ${name} exited (code ${child.exitCode}) before listening`, err)); });
  });
}

// ---------------------------------------------------------------------------
// Cleanup: every daemon and child process ends, the temp dir goes, whatever happens.

/** SIGTERM each process, SIGKILL it if it has not ended within 5 s. */
async function stopAll(procs: ChildProcess[]): Promise<void> {
  await Promise.all(procs.map(async (p) => {
    if (p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(t);
  }));
}

export async function stopDaemons(): Promise<void> {
  await stopAll(daemons.map((d) => d.child));
  daemons.length = 0;
}

let cleaning: Promise<void> | undefined;
export function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await stopAll([...children]);
    rmSync(WORK, { recursive: true, force: true });
  })();
  return cleaning;
}

for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]] as const) {
  process.on(sig, () => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\n${sig}: stopping every node and command the demo started, removing ${WORK}\n`);
    void cleanup().finally(() => process.exit(code));
  });
}
/** True once Ctrl-C (or SIGTERM) has begun the cleanup. */
export const isInterrupted = (): boolean => interrupted;
