// `npm run demo`: a real program, frozen mid-run, written to an image, restored in
// a new OS process, and hopped through fresh workers; its output compared each time
// with an uninterrupted run.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const FERRY = join(ROOT, 'bin', 'ferry.js');
const WORK = mkdtempSync(join(tmpdir(), 'ferry-demo-'));

interface Result { stdout: Buffer; stderr: string; code: number; ms: number }

function ferry(args: string[]): Promise<Result> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FERRY, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [], err: Buffer[] = [];
    child.stdout.on('data', (d) => out.push(d));
    child.stderr.on('data', (d) => err.push(d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ stdout: Buffer.concat(out), stderr: Buffer.concat(err).toString(), code: code ?? -1, ms: performance.now() - t0 }));
  });
}

const say = (s = '') => process.stdout.write(s + '\n');
const dim = (s: string) => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s);
const show = (cmd: string[]) => say(dim(`$ ferry ${cmd.map((a) => (a.includes(' ') ? JSON.stringify(a) : a)).join(' ')}`));

async function main(): Promise<void> {
  const rma = join(ROOT, 'workloads', 'bin', 'rma.wasm');
  const args = [rma, '16', '120'];
  const image = join(WORK, 'rma.img');
  const rows: string[][] = [];

  say('Ferry demo: one program (RMA: random writes over 16 MB), frozen and moved while it runs.\n');
  const base = ['run', ...args];
  show(base);
  const plain = await ferry(base);
  if (plain.code !== 0) throw new Error(`plain run failed: ${plain.stderr}`);
  process.stdout.write(plain.stdout);
  rows.push(['uninterrupted run', '-', `${plain.code}`, 'reference', `${(plain.ms / 1000).toFixed(1)} s`]);

  say('\n1. Checkpoint mid-run (Condor style): after 400 ms write an image and exit 85.');
  const ck = ['run', '--checkpoint', image, '--vacate-after', '400', ...args];
  show(ck);
  const first = await ferry(ck);
  process.stdout.write(first.stdout);
  say(dim(`(exit code ${first.code}; image ${(statSync(image).size / 1048576).toFixed(1)} MiB)`));
  show(['inspect', image]);
  const insp = await ferry(['inspect', image]);
  process.stdout.write(insp.stdout.toString().split('\n').slice(0, 12).join('\n') + '\n');
  say('\n2. Restore it in a new OS process:');
  show(['restore', image]);
  const second = await ferry(['restore', image]);
  process.stdout.write(second.stdout);
  const joined = Buffer.concat([first.stdout, second.stdout]);
  const ckSame = joined.equals(plain.stdout) && second.code === plain.code;
  rows.push(['checkpoint + restore', '1 checkpoint', `${first.code} then ${second.code}`, ckSame ? 'identical' : 'DIFFERENT', `${((first.ms + second.ms) / 1000).toFixed(1)} s`]);

  say('\n3. Hop every 150 ms: freeze, encode the image, decode it, resume in a fresh worker and instance.');
  const hop = ['run', '--verbose', '--hop-every', '150', ...args];
  show(hop);
  const hopped = await ferry(hop);
  const hops = (hopped.stderr.match(/hop \d+/g) ?? []).length;
  const stops = [...hopped.stderr.matchAll(/stop ([\d.]+) ms/g)].map((m) => Number(m[1])).sort((a, b) => a - b);
  const hopSame = hopped.stdout.equals(plain.stdout) && hopped.code === plain.code;
  say(dim(`${hops} hops, median stop latency ${stops.length ? stops[stops.length >> 1].toFixed(2) : '-'} ms`));
  rows.push(['hops through images', `${hops} hops`, `${hopped.code}`, hopSame ? 'identical' : 'DIFFERENT', `${(hopped.ms / 1000).toFixed(1)} s`]);

  say('\nSummary (output compared byte for byte with the uninterrupted run):\n');
  const head = ['mode', 'moves', 'exit', 'output', 'wall time'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => '  ' + r.map((c, i) => c.padEnd(widths[i])).join('  ');
  say(line(head));
  say(line(widths.map((w) => '-'.repeat(w))));
  for (const r of rows) say(line(r));
  say();
  if (!ckSame || !hopSame) { process.exitCode = 1; say('MISMATCH: see above'); }
}

main().catch((e) => { process.stderr.write(`demo failed: ${(e as Error).message}\n`); process.exitCode = 1; })
  .finally(() => rmSync(WORK, { recursive: true, force: true }));
