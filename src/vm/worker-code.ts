// The worker thread's code, as one plain JavaScript file.
//
// Why: a worker thread does not inherit the TypeScript loader. Loading worker.ts
// through tsx in every new thread took ~400 ms and ~500 ms of CPU (the loader's
// own thread, transpiling each file), paid on every process start and after
// every arrival (the warm worker), and competing with migrations for the CPU.
// esbuild (the compiler tsx itself uses) bundles worker.ts and what it imports
// into one file in ~50 ms, once per OS process; a worker then loads in ~30 ms.
// The file lives in the cache directory under the hash of its content, so
// processes running different sources never share one. If esbuild fails, the
// worker loads through tsx as before (worker-entry.mjs).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import v8 from 'node:v8';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { cacheDir } from './cache.ts';
import { guestNice } from './guest-priority.ts';

const HERE = dirname(fileURLToPath(import.meta.url));
const VIA_TSX = new URL('./worker-entry.mjs', import.meta.url);

/** worker.ts, then the message that says this worker is loaded (see WarmWorkers). */
const ENTRY = `import './worker.ts';
import { parentPort } from 'node:worker_threads';
parentPort?.postMessage({ type: 'loaded' });
`;

let url: URL | undefined;

/** The URL to start a worker thread with (built on first use). */
export function workerUrl(): URL {
  url ??= bundle() ?? VIA_TSX;
  return url;
}

/** A Worker's options: the bundle needs none of the parent's command-line options. A parent
 *  started with `node --import tsx` (tests, bench) would otherwise hand its loader down to the
 *  thread, and V8 flags given there are refused by Worker (they apply to the whole process anyway). */
export function workerOptions(): { execArgv?: string[]; workerData: WorkerData } {
  const workerData: WorkerData = { nice: guestNice() };
  return workerUrl() === VIA_TSX ? { workerData } : { execArgv: [], workerData };
}

/** What a guest's thread is told at its start. */
export interface WorkerData { nice: number }

function bundle(): URL | undefined {
  if (process.env.FERRY_WORKER_VIA_TSX) return undefined;
  try {
    const esbuild = loadEsbuild();
    const out = esbuild.buildSync({
      stdin: { contents: ENTRY, resolveDir: HERE, loader: 'ts', sourcefile: 'worker-bundle-entry.ts' },
      bundle: true, platform: 'node', format: 'esm', target: 'node20', write: false, logLevel: 'silent',
    });
    const code = out.outputFiles[0]!.text;
    // Only node: built-ins may stay imports: the file does not live beside node_modules.
    const bare = /^\s*import\b[^'"]*['"](?!node:)([^'"]+)['"]/m.exec(code);
    if (bare) throw new Error(`the worker bundle imports ${bare[1]}`);
    const file = join(dirname(cacheDir()), `worker-${createHash('sha256').update(code).digest('hex').slice(0, 16)}.mjs`);
    if (!existsSync(file)) {
      mkdirSync(dirname(file), { recursive: true });
      const tmp = `${file}.${process.pid}.tmp`;
      writeFileSync(tmp, code);
      renameSync(tmp, file);
    }
    return pathToFileURL(file);
  } catch (e) {
    if (process.env.FERRY_DEBUG) process.stderr.write(`ferry: worker bundle unavailable (${(e as Error).message}); loading the worker through tsx\n`);
    return undefined;
  }
}

type Esbuild = typeof import('esbuild');
/** Loaded only when a worker is first needed (the CLI's other commands never pay for it). */
function loadEsbuild(): Esbuild {
  return createRequire(import.meta.url)('esbuild') as Esbuild;
}

/** From now on, compile JavaScript eagerly, the worker threads' code among it (V8's flags are the
 *  whole process's). For a node daemon: each process arrives in a fresh worker, so its freeze and
 *  its resume ran code that thread had never run, and V8 compiled each function on its first
 *  call, in the down time. Compiled when the worker loads (off the down time, a warm worker),
 *  a 4 MB loopback Total Copy's freeze took 0.67 ms instead of 0.89, its commit to the guest's
 *  run 2.5 instead of 3.5 (medians of 10 here). */
export function compileEagerly(): void {
  v8.setFlagsFromString('--no-lazy');
}
