import { readFileSync } from 'node:fs';
import { loadPrepared } from '/work/main/src/vm/cache.ts';
import { warmWorkers } from '/work/main/src/vm/process.ts';
const b = readFileSync(process.argv[2]);
for (const v of ['plain', 'faulting', 'tracked'] as const) { const t = performance.now(); await loadPrepared(b, v); console.log(v, (performance.now() - t).toFixed(1)); }
let t = performance.now(); await warmWorkers.prewarm(); console.log('prewarm', (performance.now() - t).toFixed(1));
