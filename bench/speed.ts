// Section 1: steady-state run time under ferry against node:wasi.
// The parent spawns one child process per V8 flag set (V8 flags are per process and
// must be set before compiling); each child runs every workload under both runtimes,
// interleaved, `reps` times, and reports raw times. Ratios are taken inside one child.
// The ratio compares each runtime's fastest run: on a shared 2-core machine other load
// only ever adds time, so the minimum is the least disturbed estimate of a runtime's own
// speed (medians are printed beside it; both runtimes are treated alike).
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { f1, f2, median, prepare, ROOT, startFerry, table, wasmPath } from './util.ts';

export interface SpeedWorkload { name: string; args: string[]; files?: boolean; compute: boolean; /** filecopy: size of the generated input */ genMB?: number }

/** Default arguments: about 1 s each under node:wasi (workloads/README.md). */
export const SPEED_WORKLOADS: SpeedWorkload[] = [
  { name: 'getpid', args: [], compute: true },
  { name: 'rma', args: [], compute: true },
  { name: 'reference', args: [], compute: true },
  { name: 'pageinc', args: [], compute: true },
  { name: 'recurse', args: [], compute: true },
  // 64 MB in (the workload's own default is 8 MB, 0.13 s here with the optimizing tier alone,
  // where a fresh worker's cold JIT of the host's file calls weighs ~20%: not steady state).
  { name: 'filecopy', args: ['/data/in.bin', '/data/out.bin'], files: true, compute: true, genMB: 64 },
  { name: 'sleeper', args: [], compute: false },
  { name: 'asobjects', args: [], compute: true },
];

export interface SpeedRow {
  name: string;
  compute: boolean;
  nodeMs: number[];
  ferryMs: number[];
  /** Same stdout bytes and exit code under both (checked on every run). */
  sameOutput: boolean;
  note?: string;
}

export interface SpeedChildResult { flags: string[]; rows: SpeedRow[] }

const NODE_WORKER = new URL('./nodewasi-worker.mjs', import.meta.url);

async function runNodeWasi(module: WebAssembly.Module, args: string[], preopens: Record<string, string>, stdoutPath: string): Promise<{ ms: number; code: number; error?: string }> {
  const w = new Worker(NODE_WORKER, { workerData: { module, args, preopens, stdoutPath } });
  try {
    return await new Promise((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
      w.once('exit', (c) => reject(new Error(`node:wasi worker exited (code ${c}) before reporting`)));
    });
  } finally {
    await w.terminate();
  }
}

async function runFerryTimed(name: string, args: string[], preopens: { host: string; guest: string }[]): Promise<{ ms: number; code: number; stdout: Buffer; stderr: string }> {
  const r = await startFerry(name, { args, preopens, keepStdout: true });
  const t0 = await r.running;
  const code = await r.proc.exited;
  const ms = performance.now() - t0;
  return { ms, code, stdout: Buffer.concat(r.stdout), stderr: Buffer.concat(r.stderr).toString() };
}

const sha = (b: Uint8Array): string => crypto.createHash('sha256').update(b).digest('hex');

/** Runs in the child (see speed-child.ts). */
export async function runSpeedChild(reps: number, only?: string[]): Promise<SpeedChildResult> {
  const flags = process.execArgv.filter((a) => a !== '--no-warnings' && (a.startsWith('--no-') || a.startsWith('--wasm') || a.startsWith('--liftoff')));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-speed-'));
  const rows: SpeedRow[] = [];
  try {
    const outFile = path.join(dir, 'stdout.txt');
    for (const wl of SPEED_WORKLOADS) {
      if (only && only.length && !only.includes(wl.name)) continue;
      const plain = await WebAssembly.compile(fs.readFileSync(wasmPath(wl.name)));
      await prepare(wl.name); // transform (cached on disk) + compile, untimed
      const data = path.join(dir, 'data');
      fs.mkdirSync(data, { recursive: true });
      if (wl.files && !fs.existsSync(path.join(data, 'in.bin'))) {
        const g = await runNodeWasi(plain, ['filecopy', '--gen', '/data/in.bin', String(wl.genMB ?? 8)], { '/data': data }, outFile);
        if (g.code !== 0) throw new Error(`filecopy --gen failed (${g.code})`);
      }
      const nodePre: Record<string, string> = wl.files ? { '/data': data } : {};
      const ferryPre = wl.files ? [{ host: data, guest: '/data' }] : [];
      const row: SpeedRow = { name: wl.name, compute: wl.compute, nodeMs: [], ferryMs: [], sameOutput: true };
      for (let r = 0; r < reps; r++) {
        // alternate which runtime goes first, so drift in machine load hits both alike
        const order = r % 2 === 0 ? ['node', 'ferry'] : ['ferry', 'node'];
        let nodeOut = '', ferryOut = '', nodeCode = -1, ferryCode = -2;
        for (const which of order) {
          if (which === 'node') {
            const n = await runNodeWasi(plain, [wl.name, ...wl.args], nodePre, outFile);
            if (n.error) row.note = `node:wasi: ${n.error.split('\n')[0]}`;
            row.nodeMs.push(n.ms); nodeCode = n.code; nodeOut = sha(fs.readFileSync(outFile));
          } else {
            const f = await runFerryTimed(wl.name, wl.args, ferryPre);
            if (f.code !== 0 && f.stderr) row.note = `ferry stderr: ${f.stderr.slice(0, 200)}`;
            row.ferryMs.push(f.ms); ferryCode = f.code; ferryOut = sha(f.stdout);
          }
        }
        if (nodeOut !== ferryOut || nodeCode !== ferryCode) row.sameOutput = false;
        process.stderr.write(`  [${flags.join(' ') || 'default flags'}] ${wl.name} rep ${r + 1}: node:wasi ${f1(row.nodeMs.at(-1)!)} ms, ferry ${f1(row.ferryMs.at(-1)!)} ms\n`);
      }
      rows.push(row);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return { flags, rows };
}

/** Parent side: one child per flag set. */
export async function runSpeed(flagSets: string[][], reps: number, only?: string[]): Promise<SpeedChildResult[]> {
  const results: SpeedChildResult[] = [];
  for (const flags of flagSets) {
    const label = flags.join(' ') || 'default V8 flags';
    console.log(`\n-- speed, ${label} (${reps} interleaved reps per workload and runtime) --`);
    const child = spawn(process.execPath, ['--no-warnings', ...flags, '--import', 'tsx', path.join(ROOT, 'bench', 'speed-child.ts'), JSON.stringify({ reps, only })], {
      cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d: string) => { out += d; });
    const code = await new Promise<number | null>((res) => child.on('close', res));
    const line = out.split('\n').find((l) => l.startsWith('@@RESULT '));
    if (!line) throw new Error(`speed child (${label}) exited with ${code} and no result`);
    const r = JSON.parse(line.slice('@@RESULT '.length)) as SpeedChildResult;
    r.flags = flags;
    results.push(r);
    printSpeed(r);
  }
  return results;
}

export const GOAL_RATIO = 0.8;
/** Fastest run over fastest run (see the top of this file). */
export const ratioOf = (r: SpeedRow): number => Math.min(...r.nodeMs) / Math.min(...r.ferryMs);
export const medianRatioOf = (r: SpeedRow): number => median(r.nodeMs) / median(r.ferryMs);
/** Median of each rep's own ratio (the two runs of a rep are back to back): steadier under drifting load. */
export const pairedRatioOf = (r: SpeedRow): number => median(r.nodeMs.map((n, i) => n / r.ferryMs[i]!));

export function printSpeed(r: SpeedChildResult): void {
  const rows = r.rows.map((w) => {
    const ratio = ratioOf(w);
    return [
      w.name, f1(Math.min(...w.nodeMs)), f1(Math.min(...w.ferryMs)), f2(ratio),
      f1(median(w.nodeMs)), f1(median(w.ferryMs)), f2(medianRatioOf(w)), f2(pairedRatioOf(w)),
      w.compute ? (ratio >= GOAL_RATIO ? 'yes' : 'NO') : 'n/a (sleeps)',
      w.sameOutput ? 'same' : 'DIFFERS', w.note ?? '',
    ];
  });
  console.log(table(['workload', 'node:wasi min ms', 'ferry min ms', 'speed ratio', 'node:wasi median', 'ferry median', 'median ratio', 'paired ratio', `>= ${GOAL_RATIO}?`, 'output', 'note'], rows));
  const computes = r.rows.filter((w) => w.compute).map(ratioOf);
  const geo = Math.exp(computes.reduce((a, x) => a + Math.log(x), 0) / computes.length);
  console.log(`(speed ratio = node:wasi's fastest run / ferry's fastest run, of ${r.rows[0]?.nodeMs.length ?? 0} interleaved reps each; geometric mean over compute workloads ${f2(geo)}; ` +
    'median ratio = ratio of the medians; paired = median of per-rep ratios)');
}
