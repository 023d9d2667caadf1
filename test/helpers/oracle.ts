// Correctness oracle: run a WASI preview1 command under Node's own node:wasi,
// in a child process (isolated from the test process: its own heap, its own
// fds, a crash or proc_exit cannot take the test runner down). Ferry's output
// for the same command must match this byte for byte.
//
// The child is test/helpers/node-wasi-runner.mjs. Guest stdout/stderr are the
// child's fds 1/2 (pipes read here); the runner reports exit code, trap and
// timings as one JSON line on fd 3, so nothing is mixed into guest output.
// The guest environment is exactly opts.env (nothing is inherited), and stdin
// is empty unless opts.stdin is given.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface Preopen {
  /** Host directory (resolved against opts.cwd, then process.cwd()). */
  host: string;
  /** Path the guest sees, e.g. "/work". */
  guest: string;
}

export interface NodeWasiOptions {
  /** Path to the .wasm file. */
  wasm: string;
  /** Full argv, including argv[0] (the program name). */
  args: string[];
  /** "KEY=VALUE" strings; default none. */
  env?: string[];
  preopens?: Preopen[];
  /** Bytes the guest reads from fd 0; default: empty (EOF). */
  stdin?: Uint8Array;
  /** Working directory of the child; relative paths resolve against it. */
  cwd?: string;
  /** V8 flags set in the child before compiling, e.g. ["--no-liftoff"]. */
  v8Flags?: string[];
  /** Count calls per WASI import (reported in stats.calls). */
  countCalls?: boolean;
  /** Kill the child after this long (default 120 s). */
  timeoutMs?: number;
}

export interface NodeWasiStats {
  /** WebAssembly.compile + instantiate, in the child. */
  compileMs: number;
  /** wasi.start() until return. */
  runMs: number;
  /** Child's peak resident set size. */
  maxRssKiB: number;
  /** Guest memory size when it finished. */
  memoryBytes?: number;
  calls?: Record<string, number>;
}

export interface NodeWasiResult {
  stdout: Buffer;
  stderr: Buffer;
  /** Guest exit code (proc_exit or 0 on return from _start); 134 on a trap. */
  exitCode: number;
  /** Set when the guest trapped (or the runner itself died): the error text. */
  trap?: string;
  stats?: NodeWasiStats;
}

const RUNNER = fileURLToPath(new URL('./node-wasi-runner.mjs', import.meta.url));

export async function runNodeWasi(opts: NodeWasiOptions): Promise<NodeWasiResult> {
  const cwd = path.resolve(opts.cwd ?? process.cwd());
  let tmp: string | undefined;
  let stdinFile: string | undefined;
  if (opts.stdin) {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-oracle-'));
    stdinFile = path.join(tmp, 'stdin');
    fs.writeFileSync(stdinFile, opts.stdin);
  }
  const runnerOpts = {
    wasm: path.resolve(cwd, opts.wasm),
    args: opts.args,
    env: opts.env ?? [],
    preopens: (opts.preopens ?? []).map((p) => ({ host: path.resolve(cwd, p.host), guest: p.guest })),
    stdinFile,
    v8Flags: opts.v8Flags ?? [],
    countCalls: opts.countCalls ?? false,
  };
  try {
    return await new Promise<NodeWasiResult>((resolve, reject) => {
      const child = spawn(process.execPath, ['--no-warnings', RUNNER, JSON.stringify(runnerOpts)], {
        cwd,
        env: {},
        stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      const meta: Buffer[] = [];
      child.stdout!.on('data', (b: Buffer) => out.push(b));
      child.stderr!.on('data', (b: Buffer) => err.push(b));
      (child.stdio[3] as NodeJS.ReadableStream).on('data', (b: Buffer) => meta.push(b));
      const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 600_000);
      child.on('error', (e) => { clearTimeout(timer); reject(e); });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        const stdout = Buffer.concat(out);
        const stderr = Buffer.concat(err);
        const line = Buffer.concat(meta).toString('utf8').trim();
        if (!line) {
          resolve({
            stdout, stderr,
            exitCode: code ?? 128 + (signal ? os.constants.signals[signal] ?? 0 : 0),
            trap: `node-wasi runner died without a report (code ${code}, signal ${signal})`,
          });
          return;
        }
        const r = JSON.parse(line) as NodeWasiStats & { exitCode: number; trap?: string };
        const { exitCode, trap, ...stats } = r;
        resolve({ stdout, stderr, exitCode, ...(trap !== undefined ? { trap } : {}), stats });
      });
    });
  } finally {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  }
}
