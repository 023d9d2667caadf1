// One child process of the speed section: every workload under node:wasi and under ferry,
// interleaved, with the V8 flags given on the command line (set before anything compiles,
// so both runtimes' worker threads share them). Prints one "@@RESULT {json}" line.
// usage: node --import tsx bench/speed-child.ts '{"flags":["--no-liftoff"],"reps":3,"only":[...]}'
import v8 from 'node:v8';

const cfg = JSON.parse(process.argv[2] ?? '{}') as { flags?: string[]; reps?: number; only?: string[] };
for (const f of cfg.flags ?? []) v8.setFlagsFromString(f);

const { runSpeedChild } = await import('./speed.ts');
const result = await runSpeedChild(cfg.reps ?? 3, cfg.only);
process.stdout.write(`@@RESULT ${JSON.stringify(result)}\n`);
process.exit(0);
