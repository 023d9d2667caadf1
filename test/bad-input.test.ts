// Bad input gets one clear error line and a non-zero exit, never a half-restored process.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import binaryen from 'binaryen';
import { ferry, tempDir, ROOT } from './helpers/ferry.ts';
import { writeKey } from '../src/transport/index.ts';

const getpid = join(ROOT, 'workloads', 'bin', 'getpid.wasm');
const rma = join(ROOT, 'workloads', 'bin', 'rma.wasm');

function watModule(text: string): Uint8Array {
  const m = binaryen.parseText(text);
  try { return m.emitBinary(); } finally { m.dispose(); }
}

function assertOneLineError(r: { exitCode: number; stderr: Buffer; stdout: Buffer }, pattern: RegExp): void {
  assert.notEqual(r.exitCode, 0, 'exit code');
  const lines = r.stderr.toString().trimEnd().split('\n');
  assert.equal(lines.length, 1, `one error line, got: ${r.stderr}`);
  assert.match(lines[0], /^ferry: /);
  assert.match(lines[0], pattern);
  assert.equal(r.stdout.length, 0, 'the program printed nothing: no process was started or restored');
}

describe('bad images', () => {
  const t = tempDir();
  let image: Buffer;
  let bareImage: Buffer; // without the module bytes
  before(async () => {
    const file = join(t.path, 'ok.img');
    const r = await ferry(['run', '--checkpoint', file, '--vacate-after', '150', getpid, '3000000']);
    assert.equal(r.exitCode, 85, r.stderr.toString());
    image = readFileSync(file);
    const bare = join(t.path, 'bare.img');
    const r2 = await ferry(['run', '--no-embed-module', '--checkpoint', bare, '--vacate-after', '150', getpid, '3000000']);
    assert.equal(r2.exitCode, 85, r2.stderr.toString());
    bareImage = readFileSync(bare);
  });
  after(() => t.cleanup());

  const cases: { name: string; make: () => Buffer; args?: string[]; expect: RegExp }[] = [
    { name: 'truncated', make: () => image.subarray(0, Math.floor(image.length * 0.6)), expect: /truncated/ },
    { name: 'truncated header', make: () => image.subarray(0, 10), expect: /truncated/ },
    { name: 'corrupted byte in memory', make: () => { const b = Buffer.from(image); b[b.length - 5000] ^= 0x55; return b; }, expect: /checksum/ },
    { name: 'corrupted section header', make: () => { const b = Buffer.from(image); b[17] ^= 0xff; return b; }, expect: /image/ },
    { name: 'newer format version', make: () => { const b = Buffer.from(image); b.writeUInt16LE(9, 8); return b; }, expect: /version 9 is newer/ },
    { name: 'not an image at all', make: () => Buffer.from('#!/bin/sh\necho hello\n'.repeat(10)), expect: /not a ferry (process )?image|magic/ },
    { name: 'empty file', make: () => Buffer.alloc(0), expect: /truncated|empty/ },
    { name: 'wrong module', make: () => bareImage, args: ['--program', rma], expect: /different module/ },
    { name: 'module not found', make: () => bareImage, args: ['--program', join(ROOT, 'nope.wasm')], expect: /not found/ },
  ];
  for (const c of cases) {
    it(`refuses a ${c.name} image`, async () => {
      const file = join(t.path, `${c.name.replace(/\W+/g, '-')}.img`);
      writeFileSync(file, c.make());
      assertOneLineError(await ferry(['restore', ...(c.args ?? []), file]), c.expect);
    });
  }

  it('restores the intact images (the cases above break only what they say)', async () => {
    const file = join(t.path, 'intact.img');
    writeFileSync(file, image);
    const r = await ferry(['restore', file]);
    assert.equal(r.exitCode, 0, r.stderr.toString());
    assert.match(r.stdout.toString(), /^done 3000000 checksum/m);
    writeFileSync(file, bareImage);
    const r2 = await ferry(['restore', '--program', getpid, file]);
    assert.equal(r2.exitCode, 0, r2.stderr.toString());
  });
});

describe('bad programs', () => {
  const t = tempDir();
  after(() => t.cleanup());
  const cases: { name: string; bytes: () => Uint8Array | null; expect: RegExp }[] = [
    { name: 'a missing program', bytes: () => null, expect: /not found/ },
    { name: 'a text file', bytes: () => Buffer.from('hello, world\n'), expect: /a-text-file\.wasm is not a WebAssembly module \(it begins "hello, w"; a module begins "\\0asm"\)/ },
    { name: 'an empty file', bytes: () => new Uint8Array(0), expect: /an-empty-file\.wasm is empty, not a WebAssembly module/ },
    { name: 'a native binary', bytes: () => Buffer.from('7f454c4602010100', 'hex'), expect: /a-native-binary\.wasm is not a WebAssembly module \(it begins 0x7f454c4602010100;/ },
    { name: 'a truncated module', bytes: () => readFileSync(getpid).subarray(0, 1000), expect: /not a valid WebAssembly module/ },
    { name: 'a reactor (no _start)', bytes: () => watModule('(module (memory (export "memory") 1) (func (export "_initialize")))'), expect: /not a WASI command/ },
    { name: 'a module importing non-WASI functions', bytes: () => watModule('(module (import "env" "f" (func)) (memory (export "memory") 1) (func (export "_start") (call 0)))'), expect: /only wasi_snapshot_preview1/ },
  ];
  for (const c of cases) {
    it(`refuses ${c.name}`, async () => {
      const file = join(t.path, `${c.name.replace(/\W+/g, '-')}.wasm`);
      const bytes = c.bytes();
      if (bytes) writeFileSync(file, bytes);
      assertOneLineError(await ferry(['run', file]), c.expect);
    });
  }

  it('reports a trap as an error with the trap exit code', async () => {
    const file = join(t.path, 'trap.wasm');
    writeFileSync(file, watModule('(module (memory (export "memory") 1) (func (export "_start") unreachable))'));
    const r = await ferry(['run', file]);
    assert.equal(r.exitCode, 134);
    assert.match(r.stderr.toString(), /^ferry: .*unreachable/);
  });

  it('refuses bad options with a clear message', async () => {
    const r = await ferry(['run', '--vacate-after', '100', getpid]);
    assert.notEqual(r.exitCode, 0);
    assert.match(r.stderr.toString(), /--checkpoint/);
    const r2 = await ferry(['run', '--dir', '/definitely/not/here::/x', getpid]);
    assert.match(r2.stderr.toString(), /does not exist/);
  });
});

describe('bad data directories', () => {
  const t = tempDir();
  after(() => t.cleanup());
  // Each is refused at once with why. Under /proc, Node's recursive mkdir never returned: the
  // node hung before it listened.
  const cases: { name: string; dir: () => string; expect: RegExp }[] = [
    { name: 'under /proc', dir: () => '/proc/ferry-no-such/data', expect: /cannot make data directory \/proc\/ferry-no-such\/data: ENOENT/ },
    { name: 'a file', dir: () => t.path + '/file', expect: /cannot make data directory .*\/file: .*\/file is not a directory/ },
    { name: 'below a file', dir: () => t.path + '/file/sub', expect: /cannot make data directory .*\/file\/sub: .*\/file is not a directory/ },
  ];
  for (const c of cases) {
    it(`refuses --data-dir ${c.name}`, async () => {
      writeFileSync(join(t.path, 'file'), 'x');
      const key = join(t.path, 'k.key');
      writeKey(key);
      const r = await ferry(['node', 'start', '--name', 'd', '--listen', '127.0.0.1:0', '--key-file', key, '--data-dir', c.dir()], { timeoutMs: 20_000 });
      assert.equal(r.signal, null, 'it exited by itself');
      assertOneLineError(r, c.expect);
    });
  }
});

describe('bad migrate flags', () => {
  // Refused by the flag the user typed before anything is asked (the cluster address here
  // answers nothing): the node used to say "migrate: maxRounds must be ...".
  const cases: { args: string[]; expect: RegExp }[] = [
    { args: ['--max-rounds', '-1', '--algorithm', 'pre-copy'], expect: /--max-rounds must be a whole number of rounds from 0 to 1000/ },
    { args: ['--max-rounds', '2.5', '--algorithm', 'pre-copy'], expect: /--max-rounds must be a whole number/ },
    { args: ['--downtime-limit', 'soon', '--algorithm', 'pre-copy'], expect: /--downtime-limit must be a number of ms from 0 to 3600000/ },
    { args: ['--page-size', '5'], expect: /--page-size must be 4096, 16384 or 65536/ },
    { args: ['--algorithm', 'teleport'], expect: /unknown algorithm .teleport. \(known: total-copy, / },
  ];
  for (const c of cases) {
    it(`refuses ${c.args.join(' ')}`, async () => {
      const r = await ferry(['migrate', 'a/1', '--to', 'b', '--cluster', '127.0.0.1:1', ...c.args], { env: { FERRY_KEY_FILE: '' }, timeoutMs: 20_000 });
      assertOneLineError(r, c.expect);
    });
  }
});
