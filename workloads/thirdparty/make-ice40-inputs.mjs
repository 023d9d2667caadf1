// Regenerates the inputs of the nextpnr-ice40 and icepack workloads from
// ice40.v, with the third-party tools themselves under node:wasi:
//   yosys synth_ice40 -> ice40.json (netlist; only the top module is kept,
//   nextpnr knows the iCE40 cells itself) -> nextpnr-ice40 (HX1K, seed 1)
//   -> .asc -> icepack -> ice40.bin (the bitstream icepack -u unpacks).
// The committed files came from this script; it is not run by the tests.
// Usage: node make-ice40-inputs.mjs
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { spawnSync } from 'node:child_process';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const yosysGen = path.dirname(require.resolve('@yowasp/yosys'));
const pnrGen = path.dirname(require.resolve('@yowasp/nextpnr-ice40'));

// Each tool in its own process (the test oracle's runner): two of these large
// programs in one process crash node:wasi.
const runner = path.join(here, '..', '..', 'test', 'helpers', 'node-wasi-runner.mjs');
function run(wasm, args, preopens) {
  const opts = { wasm, args, env: [], preopens: Object.entries(preopens).map(([guest, host]) => ({ host, guest })) };
  const r = spawnSync(process.execPath, ['--no-warnings', runner, JSON.stringify(opts)], { stdio: ['ignore', 'ignore', 'inherit', 'pipe'] });
  const report = r.output[3]?.toString() ?? '';
  if (r.status !== 0 || !report.includes('"exitCode":0')) throw new Error(`${args[0]} failed: ${report || `status ${r.status}, signal ${r.signal}, ${r.error?.message ?? ""}`}`);
}

// yosys's share/ tree (with ice40/) from the YoWASP package's resource module.
function writeTree(dir, tree) {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, v] of Object.entries(tree)) {
    const to = path.join(dir, name);
    if (typeof v === 'string' || v instanceof Uint8Array) fs.writeFileSync(to, v);
    else if (v instanceof URL) fs.copyFileSync(v, to);
    else writeTree(to, v);
  }
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-ice40-inputs-'));
try {
  fs.copyFileSync(path.join(here, 'ice40.v'), path.join(work, 'ice40.v'));
  const res = await import(new URL('./resources-yosys.js', pathToFileURL(path.join(yosysGen, 'bundle.js'))).href);
  writeTree(path.join(work, 'share'), res.filesystem.share);
  run(path.join(yosysGen, 'yosys.core.wasm'),
    ['yosys', '-q', '-p', 'read_verilog /work/ice40.v; synth_ice40 -noabc9 -noabc -top top -json /work/full.json'],
    { '/work': work, '/share': path.join(work, 'share') });
  const netlist = JSON.parse(fs.readFileSync(path.join(work, 'full.json'), 'utf8'));
  netlist.modules = { top: netlist.modules.top };
  fs.writeFileSync(path.join(here, 'ice40.json'), JSON.stringify(netlist));
  fs.copyFileSync(path.join(here, 'ice40.json'), path.join(work, 'ice40.json'));
  // Only the HX1K chip database: given the package's whole share/, nextpnr reads every
  // chipdb there (240 MB of memory).
  fs.mkdirSync(path.join(work, 'pnr-share', 'ice40'), { recursive: true });
  fs.copyFileSync(path.join(pnrGen, 'share', 'ice40', 'chipdb-1k.bin'), path.join(work, 'pnr-share', 'ice40', 'chipdb-1k.bin'));
  run(path.join(pnrGen, 'nextpnr-ice40.core.wasm'),
    ['nextpnr-ice40', '-q', '--hx1k', '--package', 'tq144', '--seed', '1', '--json', '/work/ice40.json', '--asc', '/work/ice40.asc'],
    { '/work': work, '/share': path.join(work, 'pnr-share') });
  run(path.join(pnrGen, 'icepack.core.wasm'), ['icepack', '/work/ice40.asc', '/work/ice40.bin'], { '/work': work });
  fs.copyFileSync(path.join(work, 'ice40.bin'), path.join(here, 'ice40.bin'));
  console.log(`wrote ice40.json (${fs.statSync(path.join(here, 'ice40.json')).size} bytes), ice40.bin (${fs.statSync(path.join(here, 'ice40.bin')).size} bytes)`);
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
