// One child process of the speed section: every workload under node:wasi and under ferry,
// interleaved, with the V8 flags given on the command line (set before anything compiles,
// so both runtimes' worker threads share them). Prints one "@@RESULT {json}" line.
// usage: node [V8 flags] --import tsx bench/speed-child.ts '{"reps":3,"only":["rma"]}'
import v8 from 'node:v8';

const cfg = JSON.parse(process.argv[2] ?? '{}') as { flags?: string[]; reps?: number; only?: string[] };
for (const f of cfg.flags ?? []) v8.setFlagsFromString(f);

const { runSpeedChild } = await import('./speed.ts');
const result = await runSpeedChild(cfg.reps ?? 3, cfg.only);
process.stdout.write(`@@RESULT ${JSON.stringify(result)}\n`);
process.exit(0);
