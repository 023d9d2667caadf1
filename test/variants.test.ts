// The prepared variants: 'faulting' checks every access against the absent map and
// faults missing pages in (post-copy, demand paging); 'tracked' has no checks but marks
// dirty pages (pre-copy); 'plain' does neither (steady state). A process moves between
// them at any freeze: once every page is local the checks are swapped out, and a plain
// process switches to tracked before pre-copy (and back if the migration fails).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadPrepared } from '../src/vm/cache.ts';
import { newGuestMemory, WasmProcess, type Captured } from '../src/vm/process.ts';
import { initialWasiState } from '../src/wasi/host.ts';
import { ABSENT_MAP, DIRTY_MAP, TRACK_PAGE } from '../src/vm/layout.ts';
import { runNodeWasi } from './helpers/oracle.ts';
import { ROOT, TEST_CACHE } from './helpers/ferry.ts';

process.env.FERRY_CACHE_DIR = TEST_CACHE;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

for (const [name, args] of [['pageinc', ['8', '10000']], ['rma', ['4', '150']]] as const) {
  describe(`${name}: faulting -> faulting with every page absent -> tracked`, () => {
    it('runs on, faulting pages in from a page source, with output identical to node:wasi', async () => {
      const wasm = join(ROOT, 'workloads', 'bin', `${name}.wasm`);
      const bytes = readFileSync(wasm);
      const expected = await runNodeWasi({ wasm, args: [wasm, ...args] });
      const faulting = await loadPrepared(bytes, 'faulting');
      const tracked = await loadPrepared(bytes, 'tracked');
      const out: Buffer[] = [];
      const collect = (p: WasmProcess) => p.on('stdout', (d: Uint8Array) => out.push(Buffer.from(d)));

      // 1. Fresh start in the faulting variant (every page local: no faults).
      const p1 = WasmProcess.start(faulting, initialWasiState({ args: [wasm, ...args], env: [], preopens: [] }), { stdin: null, stdio: 'message' });
      collect(p1);
      await new Promise((r) => p1.once('running', r));
      await sleep(150);
      const c1: Captured = await p1.freeze();

      // 2. Resume in the faulting variant with NO page local: every first touch faults
      //    and is served from the frozen memory (the source, as post-copy would).
      const mem2 = newGuestMemory();
      let faults = 0;
      const pages = c1.logicalBytes / TRACK_PAGE;
      const p2 = WasmProcess.resume(faulting, mem2, c1.exec, c1.wasi, {
        stdin: null, stdio: 'message',
        onFault: async (addr, len) => {
          faults++;
          const first = Math.floor(addr / TRACK_PAGE) * TRACK_PAGE;
          const end = Math.ceil((addr + len) / TRACK_PAGE) * TRACK_PAGE;
          new Uint8Array(mem2.buffer).set(c1.memory.subarray(first, end), first);
        },
      });
      p2.markAbsent(0, pages);
      collect(p2);
      await p1.kill();
      await new Promise((r) => p2.once('running', r));
      await sleep(150);
      const c2 = await p2.freeze();
      assert.ok(faults > 0, 'pages were faulted in');

      // 3. Every page made local, then resume in the tracked variant (no checks).
      const mem3 = newGuestMemory();
      const view3 = new Uint8Array(mem3.buffer);
      view3.set(c2.memory.subarray(0, c2.logicalBytes));
      const absent = new Uint8Array(c2.memory.buffer, 0); // pages still absent in p2 come from p1's memory
      for (let pg = 0; pg < c2.logicalBytes / TRACK_PAGE; pg++) {
        if (isAbsent(absent, pg)) view3.set(c1.memory.subarray(pg * TRACK_PAGE, (pg + 1) * TRACK_PAGE), pg * TRACK_PAGE);
      }
      const p3 = WasmProcess.resume(tracked, mem3, c2.exec, c2.wasi, { stdin: null, stdio: 'message' });
      collect(p3);
      await p2.kill();
      const code = await p3.exited;
      assert.equal(code, expected.exitCode);
      assert.equal(Buffer.concat(out).toString(), expected.stdout.toString());
    });
  });
}

function isAbsent(mem: Uint8Array, page: number): boolean { return mem[ABSENT_MAP + page] !== 0; }

// Plain and tracked share their asyncify frames: a process switches between them in its
// own worker (continue with another variant, what a pre-copy does before its rounds)
// and in a fresh one (a capture resumed elsewhere), many times, with deep stacks.
describe('plain <-> tracked (<- faulting): frozen in one variant, resumed in another', () => {
  for (const [name, args] of [['recurse', ['3000', '6000']], ['asobjects', ['400', '1000']], ['rma', ['4', '120']]] as const) {
    it(`${name}: output identical to node:wasi`, async () => {
      const wasm = join(ROOT, 'workloads', 'bin', `${name}.wasm`);
      const bytes = readFileSync(wasm);
      const expected = await runNodeWasi({ wasm, args: [wasm, ...args] });
      const loaded = { plain: await loadPrepared(bytes, 'plain'), tracked: await loadPrepared(bytes, 'tracked'), faulting: await loadPrepared(bytes, 'faulting') };
      const out: Buffer[] = [];
      const collect = (p: WasmProcess) => p.on('stdout', (d: Uint8Array) => out.push(Buffer.from(d)));
      let p = WasmProcess.start(loaded.plain, initialWasiState({ args: [wasm, ...args], env: [], preopens: [] }), { stdin: null, stdio: 'message' });
      collect(p);
      await new Promise((r) => p.once('running', r));
      let switched = 0;
      const steps = [['same worker', 'tracked'], ['same worker', 'plain'], ['fresh worker', 'tracked'], ['fresh worker', 'plain'],
        ['fresh worker', 'faulting'], ['fresh worker', 'plain'], ['same worker', 'tracked'], ['same worker', 'plain']] as const;
      for (const [how, next] of steps) {
        await sleep(30);
        if (how === 'same worker') {
          if (!(await p.switchVariant(loaded[next]))) break; // it ended: the output still has to match
          assert.equal(p.loaded.meta.variant, next);
        } else {
          const c = await p.freeze().catch(() => null);
          if (!c) break;
          const mem = newGuestMemory();
          new Uint8Array(mem.buffer).set(c.memory.subarray(0, c.logicalBytes));
          const q = WasmProcess.resume(loaded[next], mem, c.exec, c.wasi, { stdin: null, stdio: 'message' });
          collect(q);
          await p.kill();
          p = q;
        }
        switched++;
      }
      assert.equal(await p.exited, expected.exitCode);
      assert.equal(Buffer.concat(out).toString(), expected.stdout.toString());
      assert.ok(switched >= 4, `it switched variants while running (${switched} of ${steps.length} switches before it ended)`);
    });
  }
});

describe('plain variant: nothing marked, and the switch to tracked marks every page', () => {
  it('rma: no dirty mark while plain; right after the switch every page of its memory is dirty; from then on its writes are marked', async () => {
    const wasm = join(ROOT, 'workloads', 'bin', 'rma.wasm');
    const bytes = readFileSync(wasm);
    const plain = await loadPrepared(bytes, 'plain'), tracked = await loadPrepared(bytes, 'tracked');
    const p = WasmProcess.start(plain, initialWasiState({ args: [wasm, '4', '100000'], env: [], preopens: [] }), { stdin: null, stdio: 'message' });
    try {
      await new Promise((r) => p.once('running', r));
      await sleep(100);
      const c = await p.freeze();
      const pages = c.logicalBytes / TRACK_PAGE;
      assert.ok(c.logicalBytes >= 4 << 20 && p.logicalBytes === c.logicalBytes, `its memory size is known without tracking (${p.logicalBytes} bytes, captured ${c.logicalBytes})`);
      const map = () => p.bytes.subarray(DIRTY_MAP, DIRTY_MAP + pages);
      assert.equal(map().indexOf(1), -1, 'plain: no page marked');
      p.continue(tracked);
      assert.equal(map().indexOf(0), -1, 'after the switch: every page of its memory counts as dirty');
      p.bytes.fill(0, DIRTY_MAP, DIRTY_MAP + pages);
      await sleep(100);
      await p.freeze();
      const marked = map().reduce((n, x) => n + x, 0);
      assert.ok(marked > pages / 2, `tracked: its random writes are marked (${marked} of ${pages} pages)`);
      assert.equal(p.loaded.meta.variant, 'tracked');
    } finally { await p.kill(); }
  });
});
