// The transform on the shapes real compilers emit: loops that yield values, branches
// out of loops carrying values, nested loops, recursion without loops, memory.size
// and memory.grow. Each program computes a number, exits with it (mod 256), and must
// exit identically under node:wasi, under ferry, and under ferry hopping every few ms.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import binaryen from 'binaryen';
import { ferry, ROOT, tempDir, TEST_CACHE } from './helpers/ferry.ts';
import { loadPrepared } from '../src/vm/cache.ts';
import { newGuestMemory, PreparedWorker, WasmProcess } from '../src/vm/process.ts';
import { EXPORT_INIT_DATA, FERRY_MODULE, IMPORT_MEMORY } from '../src/vm/layout.ts';
import { initialWasiState } from '../src/wasi/host.ts';
import { runNodeWasi } from './helpers/oracle.ts';
import { EndedFirst, outlasting } from './helpers/modes.ts';

process.env.FERRY_CACHE_DIR = TEST_CACHE;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Each program is built at a scale: its work grows about linearly with it, so a machine
// fast enough to finish before the first hop runs it again, longer (`outlasting`).
const PROGRAMS: Record<string, (k: number) => string> = {
  'loops yielding values, nested': (k) => `
    (func $f (param i32) (result i32) (local $acc i32)
      (loop $l (result i32)
        (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
        (local.set $acc (i32.add (local.get $acc)
          (loop $m (result i32) (local.set $acc (i32.add (local.get $acc) (i32.const 3)))
            (br_if $m (i32.and (local.get $acc) (i32.const 7))) (i32.const 1))))
        (br_if $l (i32.gt_s (local.get 0) (i32.const 0)))
        (local.get $acc)))
    (func $main (result i32) (call $f (i32.const ${30000000 * k})))`,
  'branches out of a loop with a value': (k) => `
    (func $g (param i32) (result i32) (local $x i32)
      (block $out (result i32)
        (loop $l (result i32)
          (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 1103515245)) (i32.const 12345)))
          (br_if $out (local.get $x) (i32.eqz (local.get 0)))
          (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
          (br $l))))
    (func $main (result i32) (i32.shr_u (call $g (i32.const ${40000000 * k})) (i32.const 24)))`,
  // fib(n + 3) makes ~4.2x the calls of fib(n).
  'recursion without loops': (k) => `
    (func $fib (param i32) (result i32)
      (if (result i32) (i32.lt_u (local.get 0) (i32.const 2)) (then (local.get 0))
        (else (i32.add (call $fib (i32.sub (local.get 0) (i32.const 1))) (call $fib (i32.sub (local.get 0) (i32.const 2)))))))
    (func $main (result i32) (call $fib (i32.const ${32 + 3 * Math.round(Math.log(k) / Math.log(4))})))`,
  'memory.grow and memory.size are virtual': (k) => `
    (func $main (result i32) (local $i i32) (local $s i32)
      (local.set $s (memory.size))
      (drop (memory.grow (i32.const 3)))
      (if (i32.ne (memory.grow (i32.const 100000)) (i32.const -1)) (then (unreachable)))
      (loop $l
        (i32.store (i32.mul (i32.and (local.get $i) (i32.const 0xffff)) (i32.const 4)) (local.get $i))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const ${200000000 * k}))))
      (i32.add (i32.mul (memory.size) (i32.const 10)) (local.get $s)))`,
};

function command(body: string): Uint8Array {
  const m = binaryen.parseText(`(module
    (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
    (memory (export "memory") 1 8)
    ${body}
    (func (export "_start") (call $exit (i32.and (call $main) (i32.const 255)))))`);
  m.setFeatures(binaryen.Features.All & ~binaryen.Features.GC);
  try { if (!m.validate()) throw new Error('test module does not validate'); return m.emitBinary(); } finally { m.dispose(); }
}

describe('transform on compiler shapes', () => {
  const t = tempDir();
  after(() => t.cleanup());
  for (const [name, body] of Object.entries(PROGRAMS)) {
    it(name, async () => {
      await outlasting([1, 4, 16], async (k) => {
        const file = join(t.path, `${name.replace(/\W+/g, '-')}-${k}.wasm`);
        writeFileSync(file, command(body(k)));
        const expected = await runNodeWasi({ wasm: file, args: [file] });
        const plain = await ferry(['run', file]);
        assert.equal(plain.exitCode, expected.exitCode, plain.stderr.toString());
        const hopped = await ferry(['run', '--verbose', '--hop-every', '5', file]);
        assert.equal(hopped.exitCode, expected.exitCode, hopped.stderr.toString());
        if (!/hop 1:/.test(hopped.stderr.toString())) throw new EndedFirst(`${name} at scale ${k}`, new Error('it exited before its first hop'));
      });
    });
  }
});

// The variants must lay out asyncify frames identically: a process frozen in one
// resumes in the other (deep recursion: many instrumented frames on the stack).
describe('frozen in one variant, resumed in the other', () => {
  for (const [name, args] of [['recurse', ['3000', '6000']], ['asobjects', ['400', '1000']]] as const) {
    it(`${name}: faulting -> tracked -> faulting, output identical to node:wasi`, async () => {
      const wasm = join(ROOT, 'workloads', 'bin', `${name}.wasm`);
      const bytes = readFileSync(wasm);
      const expected = await runNodeWasi({ wasm, args: [wasm, ...args] });
      const loaded = { faulting: await loadPrepared(bytes, 'faulting'), tracked: await loadPrepared(bytes, 'tracked') };
      const out: Buffer[] = [];
      let p = WasmProcess.start(loaded.faulting, initialWasiState({ args: [wasm, ...args], env: [], preopens: [] }), { stdin: null, stdio: 'message' });
      p.on('stdout', (d: Uint8Array) => out.push(Buffer.from(d)));
      await new Promise((r) => p.once('running', r));
      for (const next of ['tracked', 'faulting', 'tracked'] as const) {
        await sleep(40);
        const c = await p.freeze();
        const mem = newGuestMemory();
        new Uint8Array(mem.buffer).set(c.memory.subarray(0, c.logicalBytes));
        const q = WasmProcess.resume(loaded[next], mem, c.exec, c.wasi, { stdin: null, stdio: 'message' });
        q.on('stdout', (d: Uint8Array) => out.push(Buffer.from(d)));
        await p.kill();
        p = q;
      }
      assert.equal(await p.exited, expected.exitCode);
      assert.equal(Buffer.concat(out).toString(), expected.stdout.toString());
    });
  }
});

// A prepared module's data segments are passive: instantiating it writes no memory (a
// destination instantiates while pages arrive); a fresh start copies them in.
describe('data segments are written by a fresh start, not by instantiation', () => {
  it('instantiation leaves the memory as it was; ferry_init_data writes each segment at its offset', async () => {
    const m = binaryen.parseText(`(module
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1 8)
      (data (i32.const 1024) "first segment")
      (data (i32.const 40000) "second")
      (func (export "_start") (call $exit (i32.load8_u (i32.const 1024)))))`);
    const bytes = m.emitBinary();
    m.dispose();
    const loaded = await loadPrepared(bytes, 'plain');
    assert.deepEqual(loaded.meta.dataRanges, [[1024, 1037], [40000, 40006]]);
    const memory = newGuestMemory();
    const mem = new Uint8Array(memory.buffer);
    mem.fill(0xab, 0, 65536); // what a migration's pages put there
    const imports: Record<string, Record<string, unknown>> = {};
    for (const i of WebAssembly.Module.imports(loaded.module)) {
      imports[i.module] ??= {};
      imports[i.module]![i.name] = i.module === FERRY_MODULE && i.name === IMPORT_MEMORY ? memory : () => 0;
    }
    const instance = new WebAssembly.Instance(loaded.module, imports as WebAssembly.Imports);
    assert.ok(mem.subarray(0, 65536).every((b) => b === 0xab), 'instantiation wrote no byte');
    (instance.exports[EXPORT_INIT_DATA] as () => void)();
    assert.equal(Buffer.from(mem.subarray(1024, 1037)).toString(), 'first segment');
    assert.equal(Buffer.from(mem.subarray(40000, 40006)).toString(), 'second');
    assert.equal(mem[1023], 0xab);
    assert.equal(mem[1037], 0xab);
  });
});

// A worker that instantiated the module over the memory ahead of time (a migration's
// destination makes one during setup) runs the resumed process; one prepared for another
// module or memory is not used (the process gets a worker of its own), and either way the
// output is node:wasi's.
describe('a resume in a prepared worker', () => {
  const wasm = join(ROOT, 'workloads', 'bin', 'recurse.wasm');
  const args = ['3000', '6000'];
  for (const matching of [true, false]) {
    it(matching ? 'uses the prepared instance' : 'ignores one prepared for another memory', async () => {
      const expected = await runNodeWasi({ wasm, args: [wasm, ...args] });
      const loaded = await loadPrepared(readFileSync(wasm), 'plain');
      const out: Buffer[] = [];
      const p = WasmProcess.start(loaded, initialWasiState({ args: [wasm, ...args], env: [], preopens: [] }), { stdin: null, stdio: 'message' });
      p.on('stdout', (d: Uint8Array) => out.push(Buffer.from(d)));
      await new Promise((r) => p.once('running', r));
      await sleep(40);
      const mem = newGuestMemory();
      const prepared = new PreparedWorker(loaded, matching ? mem : newGuestMemory());
      const c = await p.freeze();
      new Uint8Array(mem.buffer).set(c.memory.subarray(0, c.logicalBytes));
      await eventually(() => prepared.ready);
      const q = WasmProcess.resume(loaded, mem, c.exec, c.wasi, { stdin: null, stdio: 'message', prepared });
      assert.equal(q.inPreparedWorker, matching);
      q.on('stdout', (d: Uint8Array) => out.push(Buffer.from(d)));
      await p.kill();
      assert.equal(await q.exited, expected.exitCode);
      assert.equal(Buffer.concat(out).toString(), expected.stdout.toString());
    });
  }
});

// A migration or checkpoint that comes too late: the error says the process ended, and how.
describe('a freeze after the end', () => {
  it('is refused with how the process ended', async () => {
    const wasm = join(ROOT, 'workloads', 'bin', 'getpid.wasm');
    const loaded = await loadPrepared(readFileSync(wasm), 'plain');
    const p = WasmProcess.start(loaded, initialWasiState({ args: [wasm, '10'], env: [], preopens: [] }), { stdin: null, stdio: 'message' });
    assert.equal(await p.exited, 0);
    await assert.rejects(p.freeze(), /^FerryError: it has exited$|it has exited/);
    const q = WasmProcess.start(loaded, initialWasiState({ args: [wasm, '100000000'], env: [], preopens: [] }), { stdin: null, stdio: 'message' });
    await new Promise((r) => q.once('running', r));
    await q.kill();
    await assert.rejects(q.freeze(), /it has been killed/);
  });
});

async function eventually(cond: () => boolean, ms = 10_000): Promise<void> {
  for (const t0 = Date.now(); !cond(); await sleep(5)) if (Date.now() - t0 > ms) throw new Error('timed out');
}

// `ferry prepare`: every variant transformed ahead of time into the cache (one child
// process for all of them), then found there; bad input named.
describe('ferry prepare', () => {
  const cache = tempDir('ferry-prepare-cache-');
  after(() => cache.cleanup());
  const env = { FERRY_CACHE_DIR: cache.path };
  const getpid = join(ROOT, 'workloads', 'bin', 'getpid.wasm');

  it('prepares every variant into the cache, then finds them there; a run needs no transform', async () => {
    const first = await ferry(['prepare', getpid], { env, timeoutMs: 300_000 });
    assert.equal(first.exitCode, 0, first.stderr.toString());
    assert.match(first.stdout.toString(), /plain, tracked, faulting prepared in [\d.]+ s/);
    const entries = readdirSync(cache.path).sort();
    assert.deepEqual(entries.filter((f) => f.endsWith('.json')).map((f) => f.replace(/^.*-/, '')), ['faulting.json', 'plain.json', 'tracked.json']);
    assert.equal(entries.filter((f) => f.endsWith('.wasm')).length, 3);
    const again = await ferry(['prepare', getpid, '--variant', 'tracked'], { env });
    assert.match(again.stdout.toString(), /tracked already prepared/);
    const run = await ferry(['run', getpid, '1000'], { env });
    assert.equal(run.exitCode, 0);
    assert.deepEqual(readdirSync(cache.path).sort(), entries, 'the run found its variant in the cache');
  });

  it('names a missing program, a file that is not wasm and an unknown variant', async () => {
    const missing = await ferry(['prepare', '/nonexistent/prog.wasm'], { env });
    assert.equal(missing.exitCode, 1);
    assert.equal(missing.stderr.toString(), 'ferry: program /nonexistent/prog.wasm not found\n');
    const notWasm = await ferry(['prepare', join(ROOT, 'README.md')], { env });
    assert.equal(notWasm.exitCode, 1);
    assert.equal(notWasm.stderr.toString(), `ferry: ${join(ROOT, 'README.md')} is not a WebAssembly module (it begins "# Ferry\\n"; a module begins "\\0asm")\n`);
    const bad = await ferry(['prepare', getpid, '--variant', 'fast'], { env });
    assert.notEqual(bad.exitCode, 0);
    assert.match(bad.stderr.toString(), /fast/);
  });
});
