// Child-process runner for the node:wasi correctness oracle (see oracle.ts).
// Usage: node --no-warnings node-wasi-runner.mjs '<json options>'
// Options: { wasm, args, env, preopens: [{host, guest}], stdinFile?, v8Flags?,
//            countCalls? }
// The guest's fds 0/1/2 are this process's fds (stdin from stdinFile when
// given). A JSON result line { exitCode, trap?, compileMs, runMs,
// maxRssKiB, memoryBytes, calls? }
// is written to fd 3, which the parent opens as a pipe, so the guest's own
// stdout/stderr stay untouched.
import { WASI } from 'node:wasi';
import fs from 'node:fs';
import v8 from 'node:v8';

const opts = JSON.parse(process.argv[2]);
for (const flag of opts.v8Flags ?? []) v8.setFlagsFromString(flag);

const report = (r) => {
  try { fs.writeSync(3, JSON.stringify(r) + '\n'); } catch { /* parent gave no fd 3 */ }
};

let stdinFd = 0;
if (opts.stdinFile) stdinFd = fs.openSync(opts.stdinFile, 'r');

const preopens = {};
for (const p of opts.preopens ?? []) preopens[p.guest] = p.host;
const env = {};
for (const kv of opts.env ?? []) {
  const i = kv.indexOf('=');
  if (i < 0) env[kv] = ''; else env[kv.slice(0, i)] = kv.slice(i + 1);
}

const wasi = new WASI({
  version: 'preview1',
  args: opts.args ?? [],
  env,
  preopens,
  stdin: stdinFd,
  stdout: 1,
  stderr: 2,
  returnOnExit: true,
});

const t0 = performance.now();
const module = await WebAssembly.compile(fs.readFileSync(opts.wasm));
const importObject = wasi.getImportObject();
// sched_yield returns at once, as under ferry: node:wasi makes the real system call, which on
// a busy machine hands the CPU to every other runnable process (getpid's millions of yields
// then take an hour). A yield has no effect on what a program computes or prints.
for (const ns of Object.values(importObject)) if (typeof ns.sched_yield === 'function') ns.sched_yield = () => 0;
// Optional: count calls per WASI import (wrapping costs a little speed).
const calls = opts.countCalls ? {} : undefined;
if (calls) {
  for (const [modName, ns] of Object.entries(importObject)) {
    const wrapped = {};
    for (const [name, fn] of Object.entries(ns)) {
      wrapped[name] = (...a) => { calls[name] = (calls[name] ?? 0) + 1; return fn(...a); };
    }
    importObject[modName] = wrapped;
  }
}
const instance = await WebAssembly.instantiate(module, importObject);
const t1 = performance.now();
let exitCode = 0;
let trap;
try {
  exitCode = wasi.start(instance) ?? 0;
} catch (e) {
  trap = String(e && e.stack ? e.stack : e);
  exitCode = 134;
}
const t2 = performance.now();
report({
  exitCode,
  trap,
  compileMs: t1 - t0,
  runMs: t2 - t1,
  maxRssKiB: process.resourceUsage().maxRSS,
  memoryBytes: instance.exports.memory instanceof WebAssembly.Memory ? instance.exports.memory.buffer.byteLength : undefined,
  calls,
});
process.exitCode = exitCode;
