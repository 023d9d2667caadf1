// Worker thread that runs one WASI command under Node's own node:wasi (the baseline).
// workerData: { module: WebAssembly.Module (already compiled), args, preopens: {guest: host},
//               stdoutPath }. Posts { ms, code } where ms times wasi.start() alone.
import { workerData, parentPort } from 'node:worker_threads';
import fs from 'node:fs';

const emitWarning = process.emitWarning;
process.emitWarning = (warning, ...rest) => {
  if (String(warning).includes('WASI')) return;
  return emitWarning.call(process, warning, ...rest);
};
const { WASI } = await import('node:wasi');

const { module, args, preopens, stdoutPath } = workerData;
const out = fs.openSync(stdoutPath, 'w');
const wasi = new WASI({ version: 'preview1', args, env: {}, preopens, stdin: 0, stdout: out, stderr: 2, returnOnExit: true });
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
let code;
let error;
const t0 = performance.now();
try {
  code = wasi.start(instance) ?? 0;
} catch (e) {
  error = String(e && e.stack ? e.stack : e);
  code = 134;
}
const ms = performance.now() - t0;
fs.closeSync(out);
parentPort.postMessage({ ms, code, error });
