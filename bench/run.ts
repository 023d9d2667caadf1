// Ferry's evaluation harness.
//   npm run bench [-- SECTION...] [options]
// SECTION: speed | stop | image | image-synthetic | migrate | all (default: speed stop image; all adds migrate)
// Options:
//   --flags SET,...  V8 flag sets for the speed section, each in its own child process
//                   (default turbofan; turbofan,default adds ~100 s). SET: turbofan = --no-liftoff --no-wasm-lazy-compilation
//                   (everything optimized at compile time), no-liftoff = --no-liftoff (optimized
//                   lazily, on a function's first call), default = V8's own (Liftoff first, tier up)
//   --reps N        repetitions per workload and runtime in speed (default 7; its ratio compares
//                   the fastest runs), per step in image (default 3)
//   --freezes N     freezes per workload in stop (default 60; 5 workloads)
//   --only a,b      restrict speed and stop to these workloads
//   --v8 SET        V8 flags of this process, for stop and image (default turbofan)
//   --only-sizes N,...  rma sizes in MB for migrate (default 4,64,512)
//   --links L,...   link settings for migrate: a bandwidth (100mbit, 1gbit), none (unshaped, TLS) or tcp
//                   (unshaped, no key: plain TCP) (default 100mbit,1gbit,none,tcp)
//   --algorithm A   migrate with this algorithm (default total-copy)
//   --compress C[,C...]  migrate with each of these page codecs in turn (none, deflate, lz4; default none)
// Ratios are measured within one process, interleaved; speed compares the fastest runs, image and stop use medians.
import v8 from 'node:v8';

const argv = process.argv.slice(2);
const opt = (name: string, dflt: string): string => {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = argv[i + 1];
  if (v === undefined) throw new Error(`--${name} needs a value`);
  argv.splice(i, 2);
  return v;
};
const FLAG_SETS: Record<string, string[]> = {
  turbofan: ['--no-liftoff', '--no-wasm-lazy-compilation'],
  'no-liftoff': ['--no-liftoff'],
  inlining: ['--no-liftoff', '--no-wasm-lazy-compilation', '--wasm-inlining'],
  default: [],
};
const flagSets = opt('flags', 'turbofan').split(',');
const repsOpt = opt('reps', '');
const speedReps = Number(repsOpt || '7'), imageReps = Number(repsOpt || '3');
const freezes = Number(opt('freezes', '60'));
const only = opt('only', '').split(',').filter(Boolean);
const ownV8 = opt('v8', 'turbofan');
const onlySizes = opt('only-sizes', '').split(',').filter(Boolean).map(Number);
const links = opt('links', '').split(',').filter(Boolean);
const algorithm = opt('algorithm', 'total-copy');
const compress = opt('compress', 'none').split(',').filter(Boolean);
const SECTIONS = ['speed', 'stop', 'image', 'image-synthetic', 'migrate'] as const;
let sections = argv.filter((a) => a !== 'all');
for (const s of sections) if (!(SECTIONS as readonly string[]).includes(s)) {
  console.error(`unknown section or option ${s}; sections: ${SECTIONS.join(', ')}, all`);
  process.exit(2);
}
if (sections.length === 0) sections = ['speed', 'stop', 'image'];
if (argv.includes('all')) sections = ['speed', 'stop', 'image', 'migrate'];
if (onlySizes.some((n) => !(Number.isInteger(n) && n > 0 && n <= 3072))) {
  console.error(`--only-sizes: MB values in 1..3072, got ${onlySizes.join(',')}`);
  process.exit(2);
}
for (const f of [...flagSets, ownV8]) if (!FLAG_SETS[f]) {
  console.error(`unknown V8 flag set ${f}; known: ${Object.keys(FLAG_SETS).join(', ')}`);
  process.exit(2);
}
// Before anything compiles: this process's flags (ferry's workers share them).
for (const f of FLAG_SETS[ownV8]!) v8.setFlagsFromString(f);

const { runSpeed, ratioOf, GOAL_RATIO } = await import('./speed.ts');
const { runStop, STOP_GOAL_MS } = await import('./stop.ts');
const { runImage, runSyntheticImage, IMAGE_GOAL_MBS, mbps } = await import('./image.ts');
const { f2, f3, median, percentile, prepare } = await import('./util.ts');
const { STOP_WORKLOADS } = await import('./stop.ts');
const { SPEED_WORKLOADS } = await import('./speed.ts');

const t0 = performance.now();
console.log(`ferry bench: sections ${sections.join(', ')}; node ${process.version}, V8 ${process.versions.v8}; ` +
  `load average ${(await import('node:os')).loadavg().map((x) => x.toFixed(2)).join(' ')}`);

// Transform every module first (cached on disk by content hash; seconds each when cold).
const names = new Set<string>();
if (sections.includes('speed')) for (const w of SPEED_WORKLOADS) if (!only.length || only.includes(w.name)) names.add(w.name);
if (sections.includes('stop')) for (const w of STOP_WORKLOADS) if (!only.length || only.includes(w.name)) names.add(w.name);
if (sections.includes('image')) names.add('rma');
for (const n of names) await prepare(n);

const summary: string[] = [];
const verdict = (ok: boolean) => (ok ? 'MET' : 'NOT MET');

if (sections.includes('speed')) {
  const sets = flagSets.map((f) => FLAG_SETS[f]!);
  const results = await runSpeed(sets, speedReps, only);
  for (const r of results) {
    const compute = r.rows.filter((w) => w.compute);
    const failing = compute.filter((w) => ratioOf(w) < GOAL_RATIO);
    const differs = r.rows.filter((w) => !w.sameOutput).map((w) => w.name);
    const ratios = compute.map((w) => `${w.name} ${f2(ratioOf(w))}`).join(', ');
    summary.push(`speed (${r.flags.join(' ') || 'default V8 flags'}): ferry >= ${GOAL_RATIO}x node:wasi on every compute workload: ${verdict(failing.length === 0)}` +
      ` (${compute.length - failing.length}/${compute.length}; ${ratios})` + (differs.length ? `; OUTPUT DIFFERS: ${differs.join(', ')}` : ''));
  }
}

if (sections.includes('stop')) {
  const rows = await runStop(freezes, only);
  const all = rows.flatMap((r) => r.stopMs);
  summary.push(`stop latency < ${STOP_GOAL_MS} ms (median over ${all.length} freezes): ${verdict(median(all) < STOP_GOAL_MS)}` +
    ` (median ${f3(median(all))} ms, p99 ${f3(percentile(all, 99))} ms, max ${f3(Math.max(...all))} ms` +
    `; p99 < ${STOP_GOAL_MS} ms: ${percentile(all, 99) < STOP_GOAL_MS ? 'yes' : 'no'})`);
}

if (sections.includes('image')) {
  const r = await runImage(imageReps);
  const enc = mbps(r.logicalBytes, median(r.encodeMs)), dec = mbps(r.logicalBytes, median(r.decodeMs));
  const app = mbps(r.logicalBytes, median(r.applyFreshMs));
  summary.push(`image encode >= ${IMAGE_GOAL_MBS / 1000} GB/s: ${verdict(enc >= IMAGE_GOAL_MBS)} (${enc.toFixed(0)} MB/s)`);
  summary.push(`image decode >= ${IMAGE_GOAL_MBS / 1000} GB/s: ${verdict(dec >= IMAGE_GOAL_MBS)} (${dec.toFixed(0)} MB/s; applyTo a fresh memory ${app.toFixed(0)} MB/s)`);
}

if (sections.includes('image-synthetic')) await runSyntheticImage(256);

if (sections.includes('migrate')) {
  const { runMigrate, migrateVerdicts, MIGRATE_SIZES, MIGRATE_LINKS } = await import('./migrate.ts');
  const rows = await runMigrate({ sizes: onlySizes.length ? onlySizes : MIGRATE_SIZES, links: links.length ? links : MIGRATE_LINKS, algorithm, compress });
  summary.push(...migrateVerdicts(rows));
}

console.log(`\n== summary (${((performance.now() - t0) / 1000).toFixed(0)} s; stop and image ran with ${FLAG_SETS[ownV8]!.join(' ') || 'default V8 flags'}) ==`);
for (const s of summary) console.log(`- ${s}`);
process.exit(0);
