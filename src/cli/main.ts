// The `ferry` command. Options before the program belong to ferry, everything after
// it to the program (wasmtime's convention).
import { Command, InvalidArgumentError, Option } from 'commander';
import { resolve } from 'node:path';
import { statSync } from 'node:fs';
import { loadProgram, resumeFromImage } from '../vm/snapshot.ts';
import { cacheDir, loadPrepared, prepareVariants } from '../vm/cache.ts';
import { VARIANT_NAMES, type Variant } from '../vm/module-meta.ts';
import { WasmProcess } from '../vm/process.ts';
import { Supervisor, type SuperviseOptions } from '../vm/supervisor.ts';
import { initialWasiState } from '../wasi/host.ts';
import { readImageFile, summarizeImage, formatSummary, ImageError } from '../image/index.ts';
import { FerryError } from '../errors.ts';
import { addRunOnNodeOptions, registerClusterCommands, runOnNode, type RunOnNodeFlags } from './cluster.ts';
import { registerMigrationCommands, restoreOnNode } from './migrate.ts';

const collect = (v: string, prev: string[]) => [...prev, v];

function positiveNumber(name: string) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive number`);
    return n;
  };
}

/** --dir HOST::GUEST (or just DIR: the same path on both sides). */
export function parseDir(spec: string): { host: string; guest: string } {
  const [host, guest] = spec.includes('::') ? spec.split('::', 2) : [spec, spec];
  if (!host || !guest) throw new FerryError('bad-argument', `--dir ${spec}: expected HOST::GUEST`);
  let st;
  try { st = statSync(host); } catch { throw new FerryError('bad-argument', `--dir ${spec}: ${host} does not exist`); }
  if (!st.isDirectory()) throw new FerryError('bad-argument', `--dir ${spec}: ${host} is not a directory`);
  return { host: resolve(host), guest };
}

function parseEnv(spec: string): string {
  if (!spec.includes('=')) throw new FerryError('bad-argument', `--env ${spec}: expected KEY=VALUE`);
  return spec;
}

interface CheckpointFlags { checkpoint?: string; vacateAfter?: number; checkpointEvery?: number; hopEvery?: number; embedModule: boolean; verbose?: boolean }

function addCheckpointOptions(cmd: Command): Command {
  return cmd
    .option('--checkpoint <file>', 'image file to write on --vacate-after, --checkpoint-every and SIGTERM')
    .option('--vacate-after <ms>', 'after MS ms of running, write the image and exit with code 85', positiveNumber('--vacate-after'))
    .option('--checkpoint-every <s>', 'write a checkpoint image every S seconds and keep running', positiveNumber('--checkpoint-every'))
    .option('--hop-every <ms>', 'every MS ms, freeze, encode, decode and resume in a fresh worker (a migration to this node)', positiveNumber('--hop-every'))
    .option('--no-embed-module', 'do not store the module bytes in images (restore finds the module by path and hash)')
    .option('-v, --verbose', 'report checkpoints and hops on stderr');
}

function superviseOptions(flags: CheckpointFlags, pid: string): SuperviseOptions {
  if ((flags.vacateAfter !== undefined || flags.checkpointEvery !== undefined) && !flags.checkpoint)
    throw new FerryError('bad-argument', '--vacate-after and --checkpoint-every need --checkpoint FILE');
  return {
    pid, node: 'local', checkpoint: flags.checkpoint, vacateAfterMs: flags.vacateAfter,
    checkpointEverySec: flags.checkpointEvery, hopEveryMs: flags.hopEvery, embedModule: flags.embedModule,
    log: flags.verbose ? (m) => process.stderr.write(`ferry: ${m}\n`) : undefined,
    warn: (m) => process.stderr.write(`ferry: ${m}\n`),
  };
}

async function supervise(sup: Supervisor): Promise<number> {
  const onTerm = () => { void sup.terminate(); };
  process.on('SIGTERM', onTerm);
  process.on('SIGINT', onTerm);
  try {
    const r = await sup.finishedPromise;
    return r.exitCode;
  } finally {
    process.off('SIGTERM', onTerm);
    process.off('SIGINT', onTerm);
  }
}

export function buildCli(): Command {
  const program = new Command('ferry')
    .description('Run WebAssembly (WASI) programs that can be frozen, checkpointed and moved while they run')
    .enablePositionalOptions()
    .showHelpAfterError();

  addRunOnNodeOptions(addCheckpointOptions(program.command('run')
    .description('run a wasm32-wasi program (its stdio passes through, its exit code propagates)')
    .argument('<program.wasm>', 'the program')
    .argument('[args...]', 'its arguments')
    .passThroughOptions()
    .option('--dir <HOST::GUEST>', 'preopen a host directory under a guest path (repeatable)', collect, [])
    .option('--argv0 <name>', 'the program\'s argv[0] (default: the path as given)')
    .addOption(new Option('--env <K=V>', 'set an environment variable (repeatable)').argParser(collect).default([]))))
    .action(async (prog: string, args: string[], flags: CheckpointFlags & { dir: string[]; env: string[]; argv0?: string; node?: string; files: string }) => {
      if (flags.node !== undefined) return runOnNode(prog, args, flags as RunOnNodeFlags);
      const preopens = flags.dir.map(parseDir);
      const env = flags.env.map(parseEnv);
      const sopts = superviseOptions(flags, 'local/1');
      const p = loadProgram(prog);
      const loaded = await loadPrepared(p.bytes, 'plain', p.hash, () => {
        if (process.stderr.isTTY || flags.verbose) process.stderr.write(`ferry: preparing ${prog} (${(p.bytes.length / 1048576).toFixed(1)} MiB) for migration; cached for next time\n`);
      });
      const proc = WasmProcess.start(loaded, initialWasiState({ args: [flags.argv0 ?? prog, ...args], env, preopens }));
      process.exitCode = await supervise(new Supervisor(proc, p, loaded, sopts));
    });

  addCheckpointOptions(program.command('restore')
    .description('continue a process from its image')
    .argument('<image>', 'the image file')
    .option('--program <wasm>', 'the module, if the image does not carry it')
    .option('--node <name>', 'restore on this node of the cluster as a new process (stdio and exit code come back here)')
    .option('--cluster <HOST:PORT>', 'any node of the cluster (default: $FERRY_CLUSTER)')
    .option('--key-file <file>', 'the cluster key (default: $FERRY_KEY_FILE)'))
    .action(async (file: string, flags: CheckpointFlags & { program?: string; node?: string; cluster?: string; keyFile?: string }) => {
      if (flags.node !== undefined) return restoreOnNode(file, { node: flags.node, cluster: flags.cluster, keyFile: flags.keyFile });
      const img = await readImageFile(file);
      const sopts = superviseOptions(flags, img.meta.pid);
      const { proc, loaded, program: p } = await resumeFromImage(img, { program: flags.program });
      process.exitCode = await supervise(new Supervisor(proc, p, loaded, sopts));
    });

  program.command('inspect')
    .description('summarize a process image')
    .argument('<image>', 'the image file')
    .option('--json', 'print JSON')
    .action(async (file: string, flags: { json?: boolean }) => {
      const s = summarizeImage(await readImageFile(file));
      process.stdout.write(flags.json ? JSON.stringify(s, null, 2) + '\n' : formatSummary(s) + '\n');
    });

  program.command('prepare')
    .description('prepare programs ahead of time (every variant, cached on disk by content hash): a run or a migration then only compiles')
    .argument('<programs...>', 'wasm32-wasi command modules')
    .addOption(new Option('--variant <name>', 'only this variant').choices([...VARIANT_NAMES]))
    .action(async (files: string[], flags: { variant?: Variant }) => {
      for (const file of files) {
        const program = loadProgram(resolve(file));
        const variants = flags.variant ? [flags.variant] : VARIANT_NAMES;
        const t0 = performance.now();
        const made = await prepareVariants(program.bytes, variants, program.hash);
        const fresh = variants.filter((_, i) => !made[i]!.cached), cached = variants.filter((_, i) => made[i]!.cached);
        const parts = [
          ...(fresh.length ? [`${fresh.join(', ')} prepared in ${((performance.now() - t0) / 1000).toFixed(1)} s`] : []),
          ...(cached.length ? [`${cached.join(', ')} already prepared`] : []),
        ];
        process.stdout.write(`${file}: ${parts.join('; ')} (${cacheDir()})\n`);
      }
    });

  registerClusterCommands(program);
  registerMigrationCommands(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await buildCli().parseAsync(argv, { from: 'user' });
  } catch (e) {
    const err = e as Error;
    const known = err instanceof FerryError || err instanceof ImageError;
    process.stderr.write(`ferry: ${err.message}\n`);
    if (!known && process.env.FERRY_DEBUG) process.stderr.write(`${err.stack}\n`);
    process.exitCode = err instanceof FerryError && err.code === 'trap' ? 134 : 1;
  }
}
