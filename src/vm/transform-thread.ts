// Runs prepareModule off the caller's thread (it takes seconds, minutes for big programs).
import { parentPort } from 'node:worker_threads';
import { prepareModule } from './prepare.ts';
import { serializeError } from '../errors.ts';
import type { Variant } from './module-meta.ts';

parentPort!.once('message', (msg: { original: Uint8Array; variant: Variant }) => {
  try {
    const { bytes, meta } = prepareModule(msg.original, msg.variant);
    parentPort!.postMessage({ ok: true, bytes, meta }, [bytes.buffer as ArrayBuffer]);
  } catch (e) {
    parentPort!.postMessage({ ok: false, error: serializeError(e) });
  }
});
