// The two prepared variants: 'faulting' checks every access against the absent map
// and faults missing pages in (post-copy, demand paging); 'tracked' has no checks.
// A process moves between them at any freeze: once every page is local, the checks
// are swapped out.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadPrepared } from '../src/vm/cache.ts';
import { newGuestMemory, WasmProcess, type Captured } from '../src/vm/process.ts';
import { initialWasiState } from '../src/wasi/host.ts';
import { ABSENT_MAP, TRACK_PAGE } from '../src/vm/layout.ts';
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
