#!/usr/bin/env node
// Runs a WASI preview1 command module under Node's own node:wasi: the
// reference oracle for ferry's workloads (an unmigrated run's output and
// exit status).
//
// usage: node workloads/run-node-wasi.mjs [options] path.wasm [args...]
//   --dir HOST::GUEST   preopen directory HOST as GUEST (repeatable);
//                       --dir PATH alone preopens PATH as itself
//   --env NAME=VALUE    add an environment variable (repeatable; the guest
//                       sees no other variables)
//   --time              print "elapsed MS ms" to stderr at exit
//   --                  end of options
// argv[0] seen by the guest is the module's base name without ".wasm".
// Exits with the guest's exit status.
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { performance } from 'node:perf_hooks';

// Keep stderr to the guest's own output: drop node:wasi's experimental notice.
const emitWarning = process.emitWarning;
process.emitWarning = (warning, ...rest) => {
  const type = typeof rest[0] === 'string' ? rest[0] : rest[0]?.type;
  if (type === 'ExperimentalWarning' && String(warning).includes('WASI')) return;
  return emitWarning.call(process, warning, ...rest);
};
const { WASI } = await import('node:wasi');

const argv = process.argv.slice(2);
const preopens = {};
const env = {};
let time = false;
while (argv.length > 0 && argv[0].startsWith('--')) {
  const opt = argv.shift();
  if (opt === '--') break;
  if (opt === '--time') time = true;
  else if (opt === '--dir') {
    const spec = argv.shift();
    if (spec === undefined) usage('--dir needs HOST::GUEST');
    const i = spec.indexOf('::');
    if (i < 0) preopens[spec] = spec;
    else preopens[spec.slice(i + 2)] = spec.slice(0, i);
  } else if (opt === '--env') {
    const kv = argv.shift();
    const i = kv === undefined ? -1 : kv.indexOf('=');
    if (i <= 0) usage('--env needs NAME=VALUE');
    env[kv.slice(0, i)] = kv.slice(i + 1);
  } else usage(`unknown option ${opt}`);
}
const file = argv.shift();
if (file === undefined) usage('no module given');

function usage(msg) {
  process.stderr.write(`run-node-wasi: ${msg}\nusage: run-node-wasi.mjs [--dir HOST::GUEST]... [--env K=V]... [--time] path.wasm [args...]\n`);
  process.exit(2);
}

const wasi = new WASI({
  version: 'preview1',
  args: [basename(file, '.wasm'), ...argv],
  env,
  preopens,
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
const t0 = performance.now();
let code = wasi.start(instance);
const ms = performance.now() - t0;
if (time) process.stderr.write(`elapsed ${ms.toFixed(1)} ms\n`);
process.exitCode = code ?? 0;
