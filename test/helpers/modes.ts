// Running one workload in each mode, in a fresh directory, and collecting what it did.
import { mkdirSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { runNodeWasi } from './oracle.ts';
import { ferry, tempDir } from './ferry.ts';
import { readOutputs, type Workload } from './workloads.ts';

export interface Outcome { stdout: string; exitCode: number; files: Record<string, string>; stderr: string; runs: number }

export function prepareDir(w: Workload): { dir: string; cleanup: () => void } {
  const t = tempDir(`ferry-${w.name}-`);
  for (const d of w.dirs ?? []) mkdirSync(join(t.path, d.host), { recursive: true });
  w.setup?.(t.path);
  return { dir: t.path, cleanup: t.cleanup };
}

/** Files compared by length and hash (a 3 MB diff helps nobody). */
export const hashFiles = (files: Record<string, Buffer>) =>
  Object.fromEntries(Object.entries(files).map(([k, v]) => [k, `${v.length} bytes, sha256 ${createHash('sha256').update(v).digest('hex')}`]));

export const dirFlags = (w: Workload, dir: string) => (w.dirs ?? []).flatMap((d) => ['--dir', `${join(dir, d.host)}::${d.guest}`]);

/** The oracle: node:wasi, in its own process. */
export async function oracle(w: Workload): Promise<Outcome> {
  const { dir, cleanup } = prepareDir(w);
  try {
    const r = await runNodeWasi({ wasm: w.wasm, args: [w.wasm, ...w.args], preopens: (w.dirs ?? []).map((d) => ({ host: join(dir, d.host), guest: d.guest })), stdin: w.stdin });
    return { stdout: r.stdout.toString('latin1'), stderr: r.stderr.toString(), exitCode: r.exitCode, files: hashFiles(readOutputs(w, dir)), runs: 1 };
  } finally { cleanup(); }
}

const references = new Map<string, Promise<Outcome>>();

/** What an unmigrated run prints: the reference of the cluster tests ("output identical to an
 *  unmigrated run"). It is ferry's own local run, which migratable.test.ts holds to node:wasi's
 *  byte for byte; node:wasi itself crashes now and then (SIGSEGV) on memories of tens of MB.
 *  Once per test file. */
export function reference(w: Workload): Promise<Outcome> {
  const key = JSON.stringify([w.name, w.wasm, w.args, w.stdin ? createHash('sha256').update(w.stdin).digest('hex') : null]);
  let r = references.get(key);
  if (!r) { r = ferryRun(w); references.set(key, r); }
  return r;
}

/** `ferry run` with extra flags (e.g. --hop-every N). */
export async function ferryRun(w: Workload, flags: string[] = []): Promise<Outcome> {
  const { dir, cleanup } = prepareDir(w);
  try {
    const r = await ferry(['run', ...flags, ...dirFlags(w, dir), w.wasm, ...w.args], { stdin: w.stdin, timeoutMs: 600_000 });
    return { stdout: r.stdout.toString('latin1'), stderr: r.stderr.toString(), exitCode: r.exitCode, files: hashFiles(readOutputs(w, dir)), runs: 1 };
  } finally { cleanup(); }
}

/** Checkpoint after `delays[0]` ms, restore in a new OS process (checkpointing again
 *  after delays[1] ms, ...), until the program ends. Output is the concatenation. */
export async function checkpointChain(w: Workload, delays: number[]): Promise<Outcome> {
  const { dir, cleanup } = prepareDir(w);
  const image = join(dir, 'process.img');
  try {
    const stdout: Buffer[] = [];
    const stderr: string[] = [];
    let r = await ferry(['run', '--checkpoint', image, '--vacate-after', String(delays[0]), ...dirFlags(w, dir), w.wasm, ...w.args], { stdin: w.stdin });
    let runs = 1;
    stdout.push(r.stdout); stderr.push(r.stderr.toString());
    while (r.exitCode === 85) {
      const d = delays[runs];
      r = await ferry(['restore', ...(d === undefined ? [] : ['--checkpoint', image, '--vacate-after', String(d)]), image]);
      runs++;
      stdout.push(r.stdout); stderr.push(r.stderr.toString());
      if (runs > delays.length + 1) throw new Error('checkpoint chain did not end');
    }
    return { stdout: Buffer.concat(stdout).toString('latin1'), stderr: stderr.join(''), exitCode: r.exitCode, files: hashFiles(readOutputs(w, dir)), runs };
  } finally { cleanup(); }
}

/** The program exited (code 0) before `during` was done with it. */
export class EndedFirst extends Error {
  override name = 'EndedFirst';
  /** `what`: the workload, or the program's description where it is no workload. */
  constructor(what: Workload | string, cause: unknown) {
    const named = typeof what === 'string' ? what : `${what.name} ${what.args.join(' ')}`;
    super(`${named} ended before the test was done with it (${(cause as Error)?.message ?? cause})`, { cause });
  }
}

/** Runs `attempt(scale)` with each scale in turn while the program ends first (EndedFirst):
 *  a workload that must outlast migrations whose length is set by the link, not by this
 *  machine's speed, runs longer on a fast machine instead of failing there. */
export async function outlasting<T>(scales: number[], attempt: (scale: number) => Promise<T>): Promise<T> {
  for (const [i, scale] of scales.entries()) {
    try { return await attempt(scale); } catch (e) {
      if (!(e instanceof EndedFirst) || i === scales.length - 1) throw e;
      console.error(`# ${e.message}: again at scale ${scales[i + 1]}`);
    }
  }
  throw new Error('outlasting: no scales');
}

/** An `onStdout` for `ferry(...)` and a promise that settles once the output has shown `marker`. */
export function watchFor(marker: string): { reached: Promise<void>; onStdout: (d: Buffer) => void } {
  let seen = '';
  let printed!: () => void;
  const reached = new Promise<void>((r) => { printed = r; });
  return { reached, onStdout: (d) => { seen = (seen + d.toString('latin1')).slice(-4096); if (seen.includes(marker)) printed(); } };
}

/** `ferry run --node NODE` against a cluster (through node `via`); `during` gets the pid
 *  once the process runs and acts on it (migrations, faults) while it runs. */
export async function clusterRun<T>(
  c: { ferry: (args: string[], o?: { stdin?: Uint8Array; via?: number; timeoutMs?: number; onStdout?: (d: Buffer) => void }) => Promise<import('./ferry.ts').RunResult> },
  client: { waitRunning(program: string, timeoutMs?: number, skip?: ReadonlySet<string>): Promise<string>; ps(): Promise<{ pid: string }[]> },
  w: Workload,
  opts: { node: string; via?: number; flags?: string[]; after?: string },
  during: (pid: string) => Promise<T>,
): Promise<{ outcome: Outcome; during: T }> {
  const { dir, cleanup } = prepareDir(w);
  try {
    // `after`: `during` starts once the program has printed this (past its start-up, in its main loop).
    const { reached, onStdout } = opts.after === undefined ? { reached: Promise.resolve(), onStdout: undefined } : watchFor(opts.after);
    const before = new Set((await client.ps()).map((p) => p.pid)); // not an earlier run of the same program
    const run = c.ferry(['run', '--node', opts.node, ...(opts.flags ?? []), ...dirFlags(w, dir), w.wasm, ...w.args], { stdin: w.stdin, via: opts.via ?? 0, timeoutMs: 600_000, onStdout });
    let result: T;
    try {
      const pid = await client.waitRunning(w.wasm, undefined, before);
      const ended = run.then(() => { throw new Error(`the program ended before printing '${opts.after}'`); });
      ended.catch(() => {}); // only the race's loser when it printed first
      await Promise.race([reached, ended]);
      result = await during(pid);
    } catch (e) {
      const r = await run;
      // The program ran to its end (exit 0) and `during` then found it gone: it ran too fast
      // for this machine, not a fault of ferry's. `outlasting` runs it again, longer.
      if (r.exitCode === 0 && /exited|has ended/.test(String((e as Error)?.message))) throw new EndedFirst(w, e);
      throw e;
    }
    const r = await run;
    return { outcome: { stdout: r.stdout.toString('latin1'), stderr: r.stderr.toString(), exitCode: r.exitCode, files: hashFiles(readOutputs(w, dir)), runs: 1 }, during: result };
  } finally { cleanup(); }
}
