import { runNodeWasi } from '/work/main/test/helpers/oracle.ts';
const t = performance.now();
const r = await runNodeWasi({ wasm: '/work/main/workloads/bin/getpid.wasm', args: ['getpid', '1000000'] });
console.log(r.exitCode, r.stdout.toString().slice(-60), performance.now() - t);
