// Worker threads do not inherit the TypeScript loader: register tsx, then load the worker.
import { register } from 'tsx/esm/api';
register();
await import('./worker.ts');
// Tell the owner this worker is loaded (a warm worker is only useful once it is).
const { parentPort } = await import('node:worker_threads');
parentPort?.postMessage({ type: 'loaded' });
