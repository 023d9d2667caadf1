// Child process for the module transform. A process of its own because V8's flags are
// per process: ferry's --no-liftoff --no-wasm-lazy-compilation (bin/ferry.js) would make
// binaryen's own 14 MB of wasm compile with the optimizing tier up front (~10 s on 2
// cores; ~1 s lazily). The transform runs in a thread of this process for its big stack.
import { Worker } from 'node:worker_threads';

process.once('message', (msg) => {
  const w = new Worker(new URL('./transform-entry.mjs', import.meta.url), { resourceLimits: { stackSizeMb: 64 } });
  const reply = (r, code) => process.send(r, () => process.exit(code));
  w.once('message', (r) => reply(r, 0));
  w.once('error', (e) => reply({ ok: false, error: { name: 'FerryError', code: 'transform-failed', message: `module transform: ${e.message}` } }, 1));
  w.postMessage(msg);
});
