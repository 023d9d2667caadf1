// Remote files (the home node's file policy): a process's WASI host sends every
// file-system call to a FileService, in this test process, directly or over a real
// loopback transport connection. Compared with node:wasi's run of the same program.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { FileService } from '../src/wasi/file-service.ts';
import {
  RemoteFs, MAX_IO_BYTES, encodeFileOp, decodeFileOp, encodeFileReply, decodeFileReply,
  type FileOpReply, type FileOpRequest, type SyncFileCall,
} from '../src/wasi/remote-fs.ts';
import { WasiHost, initialWasiState, nodeFs, type HostFs } from '../src/wasi/host.ts';
import { WasiExit, type GuestMemory, type WasiIo } from '../src/wasi/types.ts';
import { loadPrepared } from '../src/vm/cache.ts';
import { WasmProcess, type ProcessOptions } from '../src/vm/process.ts';
import { imageFromCapture, loadProgram, resumeFromImage } from '../src/vm/snapshot.ts';
import { encodeImage, decodeImage } from '../src/image/index.ts';
import { listen, connect } from '../src/transport/index.ts';
import { TEST_CACHE, tempDir } from './helpers/ferry.ts';
import { oracle, type Outcome } from './helpers/modes.ts';
import { WORKLOADS, type Workload } from './helpers/workloads.ts';

process.env.FERRY_CACHE_DIR = TEST_CACHE;
const HOST = '127.0.0.1';
const cleanups: (() => void | Promise<void>)[] = [];
after(async () => { for (const c of cleanups.reverse()) await c(); });

function dir(): string { const t = tempDir('ferry-remotefs-'); cleanups.push(t.cleanup); return t.path; }

/** A request and its reply through the wire encoding (JSON text and a body), synchronously. */
function wireCall(service: FileService, client: string): SyncFileCall {
  return (req) => {
    const q = encodeFileOp(req, { pid: client });
    const r = service.execute(client, decodeFileOp(JSON.parse(JSON.stringify(q.header)), q.body && Buffer.from(q.body)));
    const a = encodeFileReply(r, { re: 1 });
    return decodeFileReply(JSON.parse(JSON.stringify(a.header)), a.body && Buffer.from(a.body));
  };
}

// ---------------------------------------------------------------- the WASI host over RemoteFs

describe('RemoteFs under the WASI host', () => {
  const fsprog = fs.readFileSync(join(import.meta.dirname, 'fixtures', 'wasi', 'fsprog.wasm'));

  /** fsprog (the WASI conformance program of wasi.test.ts) on a host over `fsOf(dir)`. */
  async function runFsprog(fsOf: (d: string) => HostFs) {
    const d = dir();
    fs.writeFileSync(join(d, 'input.txt'), 'hello input\nsecond line\n');
    let memory: WebAssembly.Memory | null = null;
    const mem: GuestMemory = {
      bytes: () => new Uint8Array(memory!.buffer), view: () => new DataView(memory!.buffer),
      markDirty: () => {}, ensurePresent: () => {},
    };
    const out: Uint8Array[] = [], err: Uint8Array[] = [];
    const io: WasiIo = {
      write: (fd, data) => { (fd === 1 ? out : err).push(data.slice()); },
      takeStdin: () => new Uint8Array(0),
      wait: (deadline) => {
        if (deadline !== null) { const ms = deadline - performance.now(); if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms); }
        return 'timeout';
      },
    };
    const host = new WasiHost(initialWasiState({ args: ['fsprog', 'one', 'two words', 'ünï'], env: ['FOO=bar baz', 'HOME=/sandbox'], preopens: [{ host: d, guest: '/sandbox' }] }), mem, io, fsOf(d));
    const { instance } = await WebAssembly.instantiate(fsprog, { wasi_snapshot_preview1: host.imports() as WebAssembly.ModuleImports });
    memory = instance.exports.memory as WebAssembly.Memory;
    let code = 0;
    try { (instance.exports._start as () => void)(); } catch (e) { if (!(e instanceof WasiExit)) throw e; code = e.code; }
    return { code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString(), files: tree(d) };
  }

  it('fsprog: same stdout, errnos, exit code and files as over nodeFs (every call through the wire encoding)', async () => {
    const ref = await runFsprog(() => nodeFs);
    let service!: FileService;
    const got = await runFsprog((d) => { service = new FileService({ roots: [d] }); return new RemoteFs(wireCall(service, 'c')); });
    assert.equal(ref.code, 7);
    assert.deepEqual(got, ref);
    assert.match(got.stdout, /escape: refused/);
    assert.equal(service.openCount(), 0, 'every handle the program opened was closed');
  });

  it('reads and writes larger than one request (3 MiB) in pieces', () => {
    const d = dir();
    const service = new FileService({ roots: [d] });
    const calls: FileOpRequest['op'][] = [];
    const wire = wireCall(service, 'c');
    const rfs = new RemoteFs((req) => { calls.push(req.op); return wire(req); });
    const data = Buffer.alloc(3 * MAX_IO_BYTES + 5, 0).map((_, i) => (i * 7) & 0xff);
    const h = rfs.open(join(d, 'big'), { read: true, write: true, create: true });
    assert.equal(rfs.write(h, data, 10), data.length);
    const back = new Uint8Array(data.length + 100);
    assert.equal(rfs.read(h, back, 10), data.length, 'short only at end of file');
    assert.deepEqual(Buffer.from(back.subarray(0, data.length)), data);
    assert.equal(rfs.fstat(h).size, BigInt(data.length + 10));
    rfs.close(h);
    assert.equal(calls.filter((c) => c === 'write').length, 4);
    assert.equal(calls.filter((c) => c === 'read').length, 4);
  });
});

// ---------------------------------------------------------------- the service's own checks

describe('FileService', () => {
  const ok = (r: FileOpReply) => { assert.ok(r.ok, !r.ok ? `${r.code}: ${r.message}` : ''); return r as FileOpReply & { ok: true }; };
  const code = (r: FileOpReply) => (r.ok ? 'ok' : r.code);

  it('refuses paths outside its roots, symlinks included (EACCES)', () => {
    const root = dir(), outside = dir();
    fs.writeFileSync(join(outside, 'secret'), 'top secret');
    fs.writeFileSync(join(root, 'mine'), 'mine');
    fs.symlinkSync(join(outside, 'secret'), join(root, 'abs-link'));
    fs.symlinkSync('../' + outside.split('/').pop() + '/secret', join(root, 'rel-link'));
    fs.symlinkSync(outside, join(root, 'dir-link'));
    fs.symlinkSync('abs-link', join(root, 'chain'));
    const s = new FileService({ roots: [root] });
    const rd = { read: true, write: false };
    for (const p of ['/etc/passwd', join(outside, 'secret'), join(root, '..', 'x'), join(root, 'abs-link'), join(root, 'rel-link'),
      join(root, 'chain'), join(root, 'dir-link', 'secret'), 'relative/path']) {
      assert.equal(code(s.execute('c', { op: 'open', path: p, flags: rd })), 'EACCES', `open ${p}`);
    }
    assert.equal(code(s.execute('c', { op: 'stat', path: join(root, 'abs-link') })), 'EACCES');
    assert.equal(code(s.execute('c', { op: 'readdir', path: join(root, 'dir-link') })), 'EACCES');
    assert.equal(code(s.execute('c', { op: 'rename', from: join(root, 'mine'), to: join(outside, 'stolen') })), 'EACCES');
    assert.equal(code(s.execute('c', { op: 'link', from: join(outside, 'secret'), to: join(root, 'hard') })), 'EACCES');
    // Following a dangling link out of the roots must not create a file there either.
    fs.symlinkSync(join(outside, 'created'), join(root, 'dangling'));
    assert.equal(code(s.execute('c', { op: 'open', path: join(root, 'dangling'), flags: { read: false, write: true, create: true } })), 'EACCES');
    assert.equal(fs.existsSync(join(outside, 'created')), false);
    // The links themselves, and everything inside, remain reachable.
    assert.equal(ok(s.execute('c', { op: 'lstat', path: join(root, 'abs-link') })).stat!.filetype, 7);
    assert.equal(Buffer.from(ok(s.execute('c', { op: 'readlink', path: join(root, 'abs-link') })).data!).toString(), join(outside, 'secret'));
    assert.equal(code(s.execute('c', { op: 'stat', path: root })), 'ok');
    assert.equal(code(s.execute('c', { op: 'open', path: join(root, 'missing'), flags: rd })), 'ENOENT');
    const h = ok(s.execute('c', { op: 'open', path: join(root, 'mine'), flags: rd })).n!;
    assert.equal(Buffer.from(ok(s.execute('c', { op: 'read', h, len: 100, pos: 0 })).data!).toString(), 'mine');
  });

  it('keeps handles per client, limits them and closes them all on request', () => {
    const root = dir();
    fs.writeFileSync(join(root, 'f'), 'x');
    const s = new FileService({ roots: [root], maxHandles: 3 });
    const open = (c: string) => s.execute(c, { op: 'open', path: join(root, 'f'), flags: { read: true, write: false } });
    const h = ok(open('a')).n!;
    ok(open('a')); ok(open('a'));
    assert.equal(code(open('a')), 'EMFILE');
    assert.equal(code(s.execute('b', { op: 'fstat', h })), 'EBADF', "another client's handle is not yours");
    assert.equal(code(s.execute('a', { op: 'read', h, len: MAX_IO_BYTES + 1, pos: 0 })), 'EINVAL');
    ok(open('b'));
    assert.equal(s.closeAll('a'), 3);
    assert.equal(code(s.execute('a', { op: 'fstat', h })), 'EBADF');
    assert.deepEqual([s.openCount('a'), s.openCount('b')], [0, 1]);
  });

  it('decodeFileOp refuses malformed requests', () => {
    for (const h of [{ op: 'exec', path: '/bin/sh' }, { op: 'open', path: 3, flags: {} }, { op: 'read', h: -1, len: 1, pos: 0 },
      { op: 'open', path: '/x', flags: { read: true, evil: true } }, { op: 'futimes', h: 1, atime: 'now', mtime: 1 }]) {
      assert.throws(() => decodeFileOp(h), TypeError, JSON.stringify(h));
    }
  });
});

// ---------------------------------------------------------------- a real workload in a worker

const FILECOPY = WORKLOADS.find((w) => w.name === 'filecopy')!;
/** The same copy in 2 MiB freads/fwrites: each fd_read/fd_write spans several requests. */
const FILECOPY_BIG = { ...FILECOPY, name: 'filecopy-2m', args: ['/data/in.bin', '/data/out.bin', String(2 << 20), '4'] };

function prepare(w: Workload): string {
  const d = dir();
  for (const x of w.dirs ?? []) fs.mkdirSync(join(d, x.host), { recursive: true });
  w.setup?.(d);
  return d;
}
const hashFiles = (w: Workload, d: string) => Object.fromEntries((w.outputs ?? []).map((f) => {
  if (!fs.existsSync(join(d, f))) return [f, 'missing'];
  const b = fs.readFileSync(join(d, f));
  return [f, `${b.length} bytes, sha256 ${createHash('sha256').update(b).digest('hex')}`];
}));
const roots = (w: Workload, d: string) => (w.dirs ?? []).map((x) => join(d, x.host));

type FileOps = NonNullable<ProcessOptions['fileOps']>;

/** A home node's file service behind a real transport connection; `client` goes as the pid. */
async function overTransport(service: FileService) {
  const server = await listen(HOST, 0, {
    node: 'home',
    onConnection: (c) => c.handle('FILE_OP', (msg) => {
      const r = encodeFileReply(service.execute(String(msg.header.pid), decodeFileOp(msg.header, msg.body)));
      return { code: 'FILE_REPLY', header: r.header, body: r.body };
    }),
  });
  const conns: Awaited<ReturnType<typeof connect>>[] = [];
  const client = async (pid: string): Promise<{ ops: FileOps; requests: () => number; close: () => Promise<void> }> => {
    const conn = await connect(HOST, server.port, { node: `runner-${conns.length}` });
    conns.push(conn);
    let n = 0;
    return {
      ops: async (req) => {
        n++;
        const q = encodeFileOp(req, { pid });
        const m = await conn.request('FILE_OP', q.header, q.body);
        return decodeFileReply(m.header, m.body);
      },
      requests: () => n,
      close: () => conn.close(),
    };
  };
  cleanups.push(async () => { for (const c of conns) await c.close().catch(() => {}); await server.close(); });
  return { client };
}

/** Collects a process's output and waits for its end. */
function outcome(proc: WasmProcess, stdout: Buffer[], stderr: Buffer[]) {
  proc.on('stdout', (b: Uint8Array) => stdout.push(Buffer.from(b)));
  proc.on('stderr', (b: Uint8Array) => stderr.push(Buffer.from(b)));
  return proc.exited;
}

async function startRemote(w: Workload, d: string, fileOps: FileOps, extra: ProcessOptions = {}) {
  const program = loadProgram(w.wasm);
  const loaded = await loadPrepared(program.bytes, 'tracked', program.hash);
  const wasi = initialWasiState({ args: [w.wasm, ...w.args], env: [], preopens: (w.dirs ?? []).map((x) => ({ host: join(d, x.host), guest: x.guest })) });
  const proc = WasmProcess.start(loaded, wasi, { stdio: 'message', stdin: null, fileOps, ...extra });
  return { proc, program, loaded };
}

async function runRemote(w: Workload, fileOpsOf: (d: string) => Promise<FileOps> | FileOps, extra: ProcessOptions = {}): Promise<Outcome> {
  const d = prepare(w);
  const { proc } = await startRemote(w, d, await fileOpsOf(d), extra);
  const out: Buffer[] = [], err: Buffer[] = [];
  const exitCode = await outcome(proc, out, err);
  return { stdout: Buffer.concat(out).toString('latin1'), stderr: Buffer.concat(err).toString(), exitCode, files: hashFiles(w, d), runs: 1 };
}

describe('a process whose files its home node serves', () => {
  const refs = new Map<string, Promise<Outcome>>();
  const ref = (w: Workload) => { if (!refs.has(w.name)) refs.set(w.name, oracle(w)); return refs.get(w.name)!; };

  for (const w of [FILECOPY, FILECOPY_BIG]) {
    it(`${w.name} (${w.args.join(' ')}): service in this process = node:wasi`, async () => {
      let service!: FileService;
      let fullReads = 0;
      const got = await runRemote(w, (d) => {
        service = new FileService({ roots: roots(w, d) });
        return async (req) => { if (req.op === 'read' && req.len === MAX_IO_BYTES) fullReads++; return service.execute('p', req); };
      });
      const want = await ref(w);
      if (w === FILECOPY_BIG) assert.ok(fullReads >= 3, `2 MiB fd_reads went as 1 MiB requests (${fullReads})`);
      assert.equal(want.exitCode, 0);
      assert.match(want.stdout, /verify ok/);
      assert.deepEqual(got, want);
      assert.equal(service.openCount(), 0);
    });
  }

  it('filecopy over a loopback transport connection = node:wasi', async () => {
    let reqs = () => 0;
    const got = await runRemote(FILECOPY, async (d) => {
      const c = await (await overTransport(new FileService({ roots: roots(FILECOPY, d) }))).client('p/1');
      reqs = c.requests;
      return c.ops;
    });
    assert.deepEqual(got, await ref(FILECOPY));
    assert.ok(reqs() > 1500, `every read and write went over the connection (${reqs()} requests)`);
  });

  it('frozen midway, carried as an image and resumed elsewhere, still served by the home node', async () => {
    const w = FILECOPY;
    const d = prepare(w);
    const service = new FileService({ roots: roots(w, d) });
    const home = await overTransport(service);
    const first = await home.client('p/1@a');
    const out: Buffer[] = [], err: Buffer[] = [];
    let freezing: Promise<void> | null = null;
    let proc1!: WasmProcess;
    // Freeze once a few hundred calls have gone through: files are open, the copy half done.
    const ops: FileOps = (req) => {
      if (first.requests() === 300 && !freezing) freezing = Promise.resolve();
      return first.ops(req);
    };
    const started = await startRemote(w, d, ops);
    proc1 = started.proc;
    void outcome(proc1, out, err);
    while (!freezing) await new Promise((r) => setTimeout(r, 5));
    const cap = await proc1.freeze();
    const bytes = Buffer.concat(encodeImage(imageFromCapture(cap, started.program, { pid: 'p/1', node: 'a', reason: 'migration' })));
    await proc1.kill();
    assert.ok(service.closeAll('p/1@a') >= 2, 'the source held the input and output open');

    const second = await home.client('p/1@b');
    const { proc } = await resumeFromImage(decodeImage(bytes), { stdio: 'message', stdin: null, fileOps: second.ops, loaded: started.loaded });
    const exitCode = await outcome(proc, out, err);
    const got: Outcome = { stdout: Buffer.concat(out).toString('latin1'), stderr: Buffer.concat(err).toString(), exitCode, files: hashFiles(w, d), runs: 1 };
    assert.deepEqual(got, await ref(w));
    assert.ok(second.requests() > 100, `the resumed process reopened its files through the home node (${second.requests()} requests)`);
    assert.equal(service.openCount(), 0);
  });

  it('a file server that never answers fails the call with EIO after the timeout, not a hang', async () => {
    const t0 = performance.now();
    const got = await runRemote(FILECOPY, () => () => new Promise<FileOpReply>(() => {}), { fileTimeoutMs: 300 });
    const ms = performance.now() - t0;
    assert.equal(got.exitCode, 1);
    assert.match(got.stdout, /FAIL fopen \/data\/in\.bin/);
    assert.match(got.stderr, /I\/O error/);
    assert.ok(ms < 15_000, `took ${ms} ms`);
  });

  it('a closed connection to the home node fails the calls with EIO at once', async () => {
    const got = await runRemote(FILECOPY, async (d) => {
      const c = await (await overTransport(new FileService({ roots: roots(FILECOPY, d) }))).client('p/2');
      await c.close();
      return c.ops;
    });
    assert.equal(got.exitCode, 1);
    assert.match(got.stderr, /fopen \/data\/in\.bin: I\/O error/);
  });
});

/** path -> content, '<dir>' or '-> target'. */
function tree(d: string, rel = ''): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of fs.readdirSync(join(d, rel)).sort()) {
    const r = join(rel, name), p = join(d, r);
    const st = fs.lstatSync(p);
    if (st.isSymbolicLink()) out[r] = '-> ' + fs.readlinkSync(p);
    else if (st.isDirectory()) { out[r] = '<dir>'; Object.assign(out, tree(d, r)); }
    else out[r] = fs.readFileSync(p).toString('base64');
  }
  return out;
}
