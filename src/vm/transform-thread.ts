// Runs prepareModule off the caller's thread (it takes seconds, minutes for big programs),
// in the transform's child process (transform-child.mjs).
import { parentPort } from 'node:worker_threads';
import { prepareModule } from './prepare.ts';
import { serializeError } from '../errors.ts';
import type { Variant } from './module-meta.ts';

parentPort!.once('message', (msg: { original: Uint8Array; variants: Variant[] }) => {
  try {
    // binaryen is loaded once for every variant asked for.
    const modules = msg.variants.map((v) => prepareModule(msg.original, v));
    parentPort!.postMessage({ ok: true, modules }, modules.map((m) => m.bytes.buffer as ArrayBuffer));
  } catch (e) {
    parentPort!.postMessage({ ok: false, error: serializeError(e) });
  }
});
