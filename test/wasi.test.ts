import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { WASI } from 'node:wasi';
import { WasiHost, initialWasiState } from '../src/wasi/host.ts';
import { E } from '../src/wasi/constants.ts';
import { SUSPEND, WasiExit, type GuestMemory, type WasiIo, type WaitResult, type WasiState } from '../src/wasi/types.ts';

// tsconfig's lib has no WebAssembly declarations (no DOM lib): a minimal local typing.
interface WasmMemory { readonly buffer: ArrayBuffer }
interface WasmInstance { exports: Record<string, unknown> }
const WA = (globalThis as any).WebAssembly as {
  instantiate(bytes: Uint8Array, imports: object): Promise<{ instance: WasmInstance }>;
  Memory: new (d: { initial: number }) => WasmMemory;
};

const FIXTURES = path.join(import.meta.dirname, 'fixtures', 'wasi');
const fsprog = fs.readFileSync(path.join(FIXTURES, 'fsprog.wasm'));

const made: string[] = [];
function tmpdir(): string { const d = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-wasi-')); made.push(d); return d; }
after(() => { for (const d of made) fs.rmSync(d, { recursive: true, force: true }); });

function seed(dir: string): void {
  fs.writeFileSync(path.join(dir, 'input.txt'), 'hello input\nsecond line\n');
}

/** Resulting tree as path -> content (files), '<dir>' or '-> target' (symlinks). */
function tree(dir: string, rel = ''): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
    const r = path.join(rel, name), p = path.join(dir, r);
    const st = fs.lstatSync(p);
    if (st.isSymbolicLink()) out[r] = '-> ' + fs.readlinkSync(p);
    else if (st.isDirectory()) { out[r] = '<dir>'; Object.assign(out, tree(dir, r)); }
    else out[r] = fs.readFileSync(p).toString('base64');
  }
  return out;
}

class Mem implements GuestMemory {
  memory: WasmMemory | null = null;
  dirty: [number, number][] = [];
  present: [number, number][] = [];
  bytes() { return new Uint8Array(this.memory!.buffer); }
  view() { return new DataView(this.memory!.buffer); }
  markDirty(a: number, l: number) { this.dirty.push([a, l]); }
  ensurePresent(a: number, l: number) { this.present.push([a, l]); }
}

class Io implements WasiIo {
  out: Uint8Array[] = [];
  err: Uint8Array[] = [];
  stdin: Uint8Array[] = [];
  stdinEof = true;
  waits: { deadline: number | null; wantStdin: boolean }[] = [];
  onWait: (deadline: number | null, wantStdin: boolean) => WaitResult = (deadline) => {
    if (deadline !== null) { const ms = deadline - performance.now(); if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms); }
    return 'timeout';
  };
  write(fd: 1 | 2, data: Uint8Array) { (fd === 1 ? this.out : this.err).push(data.slice()); }
  takeStdin(max: number): Uint8Array | null {
    if (this.stdin.length === 0) return this.stdinEof ? new Uint8Array(0) : null;
    const c = this.stdin[0]!;
    if (c.length <= max) { this.stdin.shift(); return c; }
    this.stdin[0] = c.subarray(max);
    return c.subarray(0, max);
  }
  stdinAvailable() { return this.stdin.length > 0 ? this.stdin[0]!.length : this.stdinEof ? -1 : 0; }
  wait(deadline: number | null, wantStdin: boolean): WaitResult { this.waits.push({ deadline, wantStdin }); return this.onWait(deadline, wantStdin); }
  stdout() { return Buffer.concat(this.out).toString(); }
  stderr() { return Buffer.concat(this.err).toString(); }
}

const ARGS = ['fsprog', 'one', 'two words', 'ünï'];
const ENV = ['FOO=bar baz', 'HOME=/sandbox'];

async function runNodeWasi(dir: string) {
  const outFile = path.join(tmpdir(), 'out'), errFile = outFile + '.err', inFile = outFile + '.in';
  fs.writeFileSync(inFile, '');
  const [o, e, i] = [fs.openSync(outFile, 'w'), fs.openSync(errFile, 'w'), fs.openSync(inFile, 'r')];
  const env = Object.fromEntries(ENV.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
  const wasi = new WASI({ version: 'preview1', args: ARGS, env, preopens: { '/sandbox': dir }, returnOnExit: true, stdin: i, stdout: o, stderr: e });
  const inst = await WA.instantiate(fsprog, wasi.getImportObject());
  const code = wasi.start(inst.instance as any);
  [o, e, i].forEach((fd) => fs.closeSync(fd));
  return { code, stdout: fs.readFileSync(outFile, 'utf8'), stderr: fs.readFileSync(errFile, 'utf8') };
}

/** Runs fsprog with our host; onImport may swap hosts mid-run (returns the host to use). */
async function runFerry(dir: string, swapAfterCalls?: number) {
  const mem = new Mem(), io = new Io();
  let host = new WasiHost(initialWasiState({ args: ARGS, env: ENV, preopens: [{ host: dir, guest: '/sandbox' }] }), mem, io);
  let table = host.imports();
  let calls = 0, swaps = 0;
  const imports: Record<string, (...a: any[]) => any> = {};
  for (const name of Object.keys(table)) {
    imports[name] = (...a: any[]) => {
      if (swapAfterCalls && ++calls % swapAfterCalls === 0) {
        // Capture and continue with a fresh host built from the snapshot (as after a migration).
        const snap: WasiState = JSON.parse(JSON.stringify(host.snapshot()));
        host.dispose();
        host = new WasiHost(snap, mem, io);
        table = host.imports();
        swaps++;
      }
      return table[name]!(...a);
    };
  }
  const inst = await WA.instantiate(fsprog, { wasi_snapshot_preview1: imports });
  mem.memory = inst.instance.exports.memory as WasmMemory;
  let code: number;
  try {
    (inst.instance.exports._start as () => void)();
    code = 0;
  } catch (err) {
    if (!(err instanceof WasiExit)) throw err;
    code = err.code;
  }
  assert.equal(host.state.exitCode, code);
  return { code, stdout: io.stdout(), stderr: io.stderr(), mem, swaps };
}

// node:wasi's own sleep may end a hair early (libuv's millisecond timers): that one line is
// checked on ferry's side only; everything else must match.
const noSleep = (s: string) => s.replace(/slept >=30ms: \d/, 'slept');

test('fsprog: same stdout, exit code and files as node:wasi', async () => {
  const a = tmpdir(), b = tmpdir();
  seed(a); seed(b);
  const ref = await runNodeWasi(a);
  const got = await runFerry(b);
  assert.equal(noSleep(got.stdout), noSleep(ref.stdout));
  assert.equal(got.stderr, ref.stderr);
  assert.equal(got.code, ref.code);
  assert.equal(got.code, 7);
  assert.deepEqual(tree(b), tree(a));
  assert.match(got.stdout, /slept >=30ms: 1/);
  assert.match(got.stdout, /escape: refused/);
  assert.ok(got.mem.dirty.length > 0 && got.mem.present.length > 0);
});

test('fsprog: rebuilding the host from a snapshot every few calls changes nothing', async () => {
  const a = tmpdir(), b = tmpdir();
  seed(a); seed(b);
  const ref = await runNodeWasi(a);
  for (const every of [3, 7]) {
    const c = tmpdir(); seed(c);
    const got = await runFerry(c, every);
    assert.ok(got.swaps > 20);
    assert.equal(noSleep(got.stdout), noSleep(ref.stdout));
    assert.match(got.stdout, /slept >=30ms: 1/);
    assert.equal(got.code, ref.code);
    assert.deepEqual(tree(c), tree(a));
  }
});

// ---- direct calls on a plain memory

function setup(dir: string, io = new Io()) {
  const memory = new WA.Memory({ initial: 2 });
  const mem = new Mem(); mem.memory = memory;
  const state = initialWasiState({ args: ['p'], env: [], preopens: [{ host: dir, guest: '/sb' }] });
  const host = new WasiHost(state, mem, io);
  const str = (addr: number, s: string) => { const b = Buffer.from(s); mem.bytes().set(b, addr); return b.length; };
  return { memory, mem, io, host, w: host.imports(), str, u32: (a: number) => mem.view().getUint32(a, true), u64: (a: number) => mem.view().getBigUint64(a, true) };
}

test('snapshot keeps file offsets; a new host reopens lazily', () => {
  const dir = tmpdir();
  fs.writeFileSync(path.join(dir, 'f'), 'abcdefghij');
  const t = setup(dir);
  const n = t.str(1000, 'f');
  // path_open(dirfd 3, follow, "f", oflags 0, rights read|write|seek|tell, 0, fdflags 0, out 2000)
  assert.equal(t.w.path_open!(3, 1, 1000, n, 0, (1n << 1n) | (1n << 6n) | (1n << 2n) | (1n << 5n), 0n, 0, 2000), E.SUCCESS);
  const fd = t.u32(2000);
  // read 3 bytes: iovec at 3000 -> buf 4000 len 3
  t.mem.view().setUint32(3000, 4000, true); t.mem.view().setUint32(3004, 3, true);
  assert.equal(t.w.fd_read!(fd, 3000, 1, 3100), E.SUCCESS);
  assert.equal(Buffer.from(t.mem.bytes().subarray(4000, 4003)).toString(), 'abc');
  const snap = JSON.parse(JSON.stringify(t.host.snapshot())) as WasiState;
  assert.equal(snap.fds[fd]!.offset, 3);
  const t2host = new WasiHost(snap, t.mem, t.io);
  const w2 = t2host.imports();
  assert.equal(w2.fd_read!(fd, 3000, 1, 3100), E.SUCCESS);
  assert.equal(Buffer.from(t.mem.bytes().subarray(4000, 4003)).toString(), 'def');
  // write through the new host at its offset (6), then tell
  t.str(4000, 'XY'); t.mem.view().setUint32(3004, 2, true);
  assert.equal(w2.fd_write!(fd, 3000, 1, 3100), E.SUCCESS);
  assert.equal(w2.fd_tell!(fd, 3200), E.SUCCESS);
  assert.equal(t.u64(3200), 8n);
  assert.equal(fs.readFileSync(path.join(dir, 'f'), 'utf8'), 'abcdefXYij');
  t.host.dispose(); t2host.dispose();
});

test('bad fd gives EBADF; escaping the preopen is refused', () => {
  const dir = tmpdir();
  fs.mkdirSync(path.join(dir, 'sub'));
  fs.symlinkSync('../..', path.join(dir, 'sub', 'out'));
  const t = setup(dir);
  assert.equal(t.w.fd_read!(99, 0, 0, 100), E.BADF);
  assert.equal(t.w.fd_write!(42, 0, 0, 100), E.BADF);
  assert.equal(t.w.fd_close!(17), E.BADF);
  assert.equal(t.w.fd_seek!(55, 0n, 0, 100), E.BADF);
  assert.equal(t.w.fd_prestat_get!(4, 100), E.BADF);
  const open = (p: string) => { const n = t.str(1000, p); return t.w.path_open!(3, 1, 1000, n, 0, 2n, 0n, 0, 2000); };
  assert.equal(open('../etc/passwd'), E.NOTCAPABLE);
  assert.equal(open('sub/../../x'), E.NOTCAPABLE);
  assert.equal(open('/etc/passwd'), E.NOTCAPABLE);
  assert.equal(open('sub/out/etc/passwd'), E.NOTCAPABLE);
  assert.equal(open('sub/../nope'), E.NOENT);
  const n = t.str(1000, '../x');
  assert.equal(t.w.path_create_directory!(3, 1000, n), E.NOTCAPABLE);
  assert.ok(!fs.existsSync(path.join(path.dirname(dir), 'x')));
  // the fd table is untouched by failures
  assert.deepEqual(Object.keys(t.host.state.fds), ['0', '1', '2', '3']);
});

test('i32 arguments are unsigned: addresses above 2 GiB', () => {
  const dir = tmpdir();
  const t = setup(dir);
  // Negative (as wasm passes them) addresses outside a small memory must give EFAULT, not corrupt.
  assert.equal(t.w.clock_time_get!(1, 0n, -8), E.FAULT);
  assert.equal(t.w.args_sizes_get!(0x80000000 | 0, 0), E.FAULT);
});

/** Writes one relative monotonic clock subscription at 1000; events at 2000; nevents at 3000. */
function clockSub(t: ReturnType<typeof setup>, ns: bigint, userdata = 77n) {
  const v = t.mem.view();
  for (let i = 0; i < 48; i++) v.setUint8(1000 + i, 0);
  v.setBigUint64(1000, userdata, true);
  v.setUint8(1008, 0);            // clock
  v.setUint32(1016, 1, true);     // monotonic
  v.setBigUint64(1024, ns, true); // timeout
  v.setUint16(1040, 0, true);     // relative
}

test('poll_oneoff sleeps; SUSPEND then resume keeps the remaining sleep', () => {
  const dir = tmpdir();
  const io = new Io();
  const t = setup(dir, io);
  // plain sleep
  clockSub(t, 20_000_000n);
  let t0 = performance.now();
  assert.equal(t.w.poll_oneoff!(1000, 2000, 1, 3000), E.SUCCESS);
  assert.ok(performance.now() - t0 >= 19.5);
  assert.equal(t.u32(3000), 1);
  assert.equal(t.u64(2000), 77n);
  assert.equal(t.host.state.pendingDeadlineNs, null);

  // a 300 ms sleep stopped after ~100 ms
  clockSub(t, 300_000_000n, 5n);
  io.onWait = (deadline) => { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 100); return 'stop'; };
  const start = t.host.monotonicNs();
  assert.equal(t.w.poll_oneoff!(1000, 2000, 1, 3000), SUSPEND);
  assert.equal(BigInt(t.host.state.pendingDeadlineNs!) - start < 300_000_000n + 5_000_000n, true);
  const snap = JSON.parse(JSON.stringify(t.host.snapshot())) as WasiState;
  const remaining = BigInt(snap.pendingDeadlineNs!) - BigInt(snap.monotonicNs);
  assert.ok(remaining > 150_000_000n && remaining < 215_000_000n, `remaining ${remaining}`);

  // the process is frozen for 200 ms; the guest clock does not advance meanwhile
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 200);
  const io2 = new Io();
  const h2 = new WasiHost(snap, t.mem, io2);
  const w2 = h2.imports();
  t0 = performance.now();
  assert.equal(w2.poll_oneoff!(1000, 2000, 1, 3000), E.SUCCESS);
  const slept = performance.now() - t0;
  assert.ok(slept >= Number(remaining) / 1e6 - 2 && slept < Number(remaining) / 1e6 + 60, `slept ${slept} remaining ${remaining}`);
  assert.equal(io2.waits.length >= 1, true);
  assert.equal(t.u32(3000), 1);
  assert.equal(t.u64(2000), 5n);
  assert.equal(h2.state.pendingDeadlineNs, null);
  assert.equal(h2.state.pendingPollStartNs, null);
  // the guest monotonic clock continued from the capture point
  assert.ok(h2.monotonicNs() - BigInt(snap.monotonicNs) < 400_000_000n);
});

test('stdin: fd_read blocks, SUSPEND consumes nothing, then reads; poll reports readiness', () => {
  const dir = tmpdir();
  const io = new Io();
  io.stdinEof = false;
  const t = setup(dir, io);
  t.mem.view().setUint32(100, 4000, true); t.mem.view().setUint32(104, 16, true);
  io.onWait = () => 'stop';
  assert.equal(t.w.fd_read!(0, 100, 1, 200), SUSPEND);
  // poll on stdin + 10 ms clock: clock fires first
  const v = t.mem.view();
  clockSub(t, 10_000_000n, 1n);
  for (let i = 0; i < 48; i++) v.setUint8(1048 + i, 0);
  v.setBigUint64(1048, 2n, true); v.setUint8(1056, 1); v.setUint32(1064, 0, true);
  io.onWait = (d) => { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Math.max(0, d! - performance.now())); return 'timeout'; };
  assert.equal(t.w.poll_oneoff!(1000, 2000, 2, 3000), E.SUCCESS);
  assert.equal(t.u32(3000), 1);
  assert.equal(t.u64(2000), 1n);
  assert.equal(io.waits.at(-1)!.wantStdin, true);
  // data arrives while waiting
  io.onWait = () => { io.stdin.push(Buffer.from('hello\n')); return 'ready'; };
  assert.equal(t.w.poll_oneoff!(1000, 2000, 2, 3000), E.SUCCESS);
  assert.equal(t.u32(3000), 1);
  assert.equal(t.u64(2000), 2n);
  assert.equal(t.u64(2016), 6n);
  assert.equal(t.w.fd_read!(0, 100, 1, 200), E.SUCCESS);
  assert.equal(t.u32(200), 6);
  assert.equal(Buffer.from(t.mem.bytes().subarray(4000, 4006)).toString(), 'hello\n');
  io.stdinEof = true;
  assert.equal(t.w.fd_read!(0, 100, 1, 200), E.SUCCESS);
  assert.equal(t.u32(200), 0);
});

test('proc_exit sets exitCode and throws WasiExit; stdout goes to io.write', () => {
  const t = setup(tmpdir());
  const n = t.str(4000, 'hi\n');
  t.mem.view().setUint32(100, 4000, true); t.mem.view().setUint32(104, n, true);
  assert.equal(t.w.fd_write!(1, 100, 1, 200), E.SUCCESS);
  assert.equal(t.io.stdout(), 'hi\n');
  // renumber stdout onto stderr: writes to 2 now go to stdout
  assert.equal(t.w.fd_renumber!(1, 2), E.SUCCESS);
  assert.equal(t.w.fd_write!(2, 100, 1, 200), E.SUCCESS);
  assert.equal(t.w.fd_write!(1, 100, 1, 200), E.BADF);
  assert.equal(t.io.stdout(), 'hi\nhi\n');
  assert.throws(() => t.w.proc_exit!(3), (e: unknown) => e instanceof WasiExit && e.code === 3);
  assert.equal(t.host.state.exitCode, 3);
});

test('symlinks: relative links inside the preopen are followed, links out are refused', () => {
  const dir = tmpdir();
  fs.mkdirSync(path.join(dir, 'd'));
  fs.writeFileSync(path.join(dir, 'a.txt'), 'AAAA');
  const t = setup(dir);
  const sym = (target: string, at: string) => {
    const n1 = t.str(1000, target), n2 = t.str(1100, at);
    return t.w.path_symlink!(1000, n1, 3, 1100, n2);
  };
  assert.equal(sym('../a.txt', 'd/up'), E.SUCCESS);
  assert.equal(sym('/etc/passwd', 'abs'), E.SUCCESS);
  assert.equal(sym('loop2', 'loop1'), E.SUCCESS);
  assert.equal(sym('loop1', 'loop2'), E.SUCCESS);
  const open = (p: string, follow = 1) => { const n = t.str(1000, p); return t.w.path_open!(3, follow, 1000, n, 0, 2n, 0n, 0, 2000); };
  assert.equal(open('d/up'), E.SUCCESS);
  const fd = t.u32(2000);
  t.mem.view().setUint32(3000, 4000, true); t.mem.view().setUint32(3004, 4, true);
  assert.equal(t.w.fd_read!(fd, 3000, 1, 3100), E.SUCCESS);
  assert.equal(Buffer.from(t.mem.bytes().subarray(4000, 4004)).toString(), 'AAAA');
  assert.equal(open('abs'), E.NOTCAPABLE);
  assert.equal(open('loop1'), E.LOOP);
  assert.equal(open('d/up', 0), E.LOOP);           // O_NOFOLLOW on a symlink
  // readlink does not follow
  const n = t.str(1000, 'd/up');
  assert.equal(t.w.path_readlink!(3, 1000, n, 5000, 100, 5200), E.SUCCESS);
  assert.equal(Buffer.from(t.mem.bytes().subarray(5000, 5000 + t.u32(5200))).toString(), '../a.txt');
  t.host.dispose();
});

test('fd_readdir lists entries with stable cookies and truncates at the buffer end', () => {
  const dir = tmpdir();
  for (const f of ['x', 'yy', 'zzz']) fs.writeFileSync(path.join(dir, f), f);
  const t = setup(dir);
  const names: string[] = [];
  let cookie = 0n;
  for (;;) {
    assert.equal(t.w.fd_readdir!(3, 4000, 40, cookie, 3000), E.SUCCESS); // room for ~1 entry per call
    const used = t.u32(3000);
    if (used === 0) break;
    const v = t.mem.view();
    const len = v.getUint32(4016, true);
    if (used < 24 + len) { assert.equal(used, 40); } // truncated is fine only if the buffer is full
    names.push(Buffer.from(t.mem.bytes().subarray(4024, 4024 + len)).toString());
    cookie = v.getBigUint64(4000, true);
  }
  assert.deepEqual(names.sort(), ['.', '..', 'x', 'yy', 'zzz']);
});

test('poll_oneoff: absolute monotonic deadline; resume from pendingDeadlineNs alone', () => {
  const t = setup(tmpdir());
  const v = t.mem.view();
  const target = t.host.monotonicNs() + 30_000_000n;
  clockSub(t, target, 9n);
  v.setUint16(1040, 1, true);                  // ABSTIME
  let t0 = performance.now();
  assert.equal(t.w.poll_oneoff!(1000, 2000, 1, 3000), E.SUCCESS);
  assert.ok(performance.now() - t0 >= 25);
  assert.ok(t.host.monotonicNs() >= target);
  // a state that only carries pendingDeadlineNs (no start time): 40 ms left of a 1 s sleep
  const snap = t.host.snapshot();
  snap.pendingDeadlineNs = (BigInt(snap.monotonicNs) + 40_000_000n).toString();
  delete snap.pendingPollStartNs;
  const h2 = new WasiHost(snap, t.mem, new Io());
  clockSub(t, 1_000_000_000n, 10n);
  t0 = performance.now();
  assert.equal(h2.imports().poll_oneoff!(1000, 2000, 1, 3000), E.SUCCESS);
  const slept = performance.now() - t0;
  assert.ok(slept >= 35 && slept < 200, `slept ${slept}`);
  assert.equal(t.u64(2000), 10n);
  assert.equal(h2.state.pendingDeadlineNs, null);
});
