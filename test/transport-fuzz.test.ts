// Fuzzed frames and handshakes never crash a node: it answers with an ERROR
// frame (or, for a TLS node, drops the connection) and keeps accepting valid
// connections. Bounded runs, all on 127.0.0.1 port 0.
import { rawExchange as rawExchangeAt } from './helpers/raw-socket.ts';
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import fc from 'fast-check';
import {
  encodeFrame, encodePreamble, resolveCode, FrameDecoder, MAGIC, listen, connect, generateKey,
  type FerryServer, type Frame, type CodeName,
} from '../src/transport/index.ts';

const HOST = '127.0.0.1';
const RUNS = 200;

function frame(name: CodeName, header?: Record<string, unknown>, body?: Uint8Array): Buffer {
  return encodeFrame(resolveCode(name), header, body);
}

const HANDSHAKE = Buffer.concat([encodePreamble(), frame('HELLO', { node: 'fuzzer', role: 'node', version: 1, capabilities: ['rpc'], requires: [] })]);
const VALID_FRAMES = [
  frame('REQUEST', { id: 1, method: 'echo', value: 'x' }, Buffer.from('abc')),
  frame('PING', { id: 2 }),
  frame('PAGE_REQUEST', { id: 3, page: 7 }),
  frame('STREAM_DATA', { stream: 1, meta: { tag: 'f' } }, Buffer.alloc(300, 9)),
  frame('STREAM_END', { stream: 1 }),
  frame('RESPONSE', { re: 99 }),
  frame('ERROR', { re: 98, code: 'x', message: 'y' }),
];

const exchange = (port: number, bytes: Uint8Array, timeoutMs?: number) => rawExchangeAt(HOST, port, bytes, timeoutMs);

type Op = { kind: 'flip'; at: number; mask: number } | { kind: 'cut'; at: number } | { kind: 'insert'; at: number; bytes: Uint8Array } | { kind: 'u32'; at: number; value: number };
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  fc.record({ kind: fc.constant('u32' as const), at: fc.nat(), value: fc.oneof(fc.constantFrom(0, 1, 7, 8, 0xffff, 0x7fffffff, 0xffffffff, 16 * 1024 * 1024 + 1), fc.nat()) }),
);

function mutate(input: Buffer, ops: Op[], from = 0): Buffer {
  let b = Buffer.from(input);
  for (const op of ops) {
    const span = b.length - from;
    if (span <= 0) break;
    const at = from + (op.at % span);
    if (op.kind === 'flip') b[at] ^= op.mask;
    else if (op.kind === 'cut') b = b.subarray(0, at);
    else if (op.kind === 'insert') b = Buffer.concat([b.subarray(0, at), op.bytes, b.subarray(at)]);
    else if (at + 4 <= b.length) b.writeUInt32BE(op.value >>> 0, at);
  }
  return b;
}

/** The server's reply must be well formed: its preamble then valid frames; a refused handshake carries an ERROR. */
function checkReply(data: Buffer): { accepted: boolean; errors: Frame[] } {
  if (data.length === 0) return { accepted: false, errors: [] };
  assert.ok(data.length >= 10 && data.subarray(0, 8).equals(MAGIC), `reply starts with the preamble: ${data.subarray(0, 16).toString('hex')}`);
  const frames = new FrameDecoder().push(data.subarray(10));
  assert.ok(frames.length > 0, 'the reply holds at least one frame');
  const accepted = frames[0].name === 'HELLO_ACK';
  const errors = frames.filter((f) => f.name === 'ERROR');
  if (!accepted) assert.equal(frames[0].name, 'ERROR', 'a refused handshake is answered with an ERROR');
  for (const e of errors) { assert.equal(typeof e.header.code, 'string'); assert.equal(typeof e.header.message, 'string'); }
  return { accepted, errors };
}

describe('fuzzing a node', () => {
  let server: FerryServer;
  let refused = 0;
  let stillAlive: () => Promise<void>;
  before(async () => {
    server = await listen(HOST, 0, {
      node: 'fuzz-target', timeoutMs: 2000,
      onConnection: (c) => {
        c.handle('REQUEST', (m) => ({ header: { echo: m.header.value ?? null }, body: m.body }));
        c.handle('PAGE_REQUEST', () => ({ code: 'PAGE_DATA', body: Buffer.alloc(4096) }));
        c.onStream((s) => { s.collect().catch(() => {}); });
      },
      onRefused: () => { refused++; },
    });
    stillAlive = async () => {
      const c = await connect(HOST, server.port, { node: 'witness', timeoutMs: 2000 });
      assert.equal((await c.request('REQUEST', { value: 'alive' }, undefined, { timeoutMs: 2000 })).header.echo, 'alive');
      c.destroy();
    };
  });
  after(() => server.close());

  it('survives random bytes, answering each connection with an ERROR', async () => {
    await fc.assert(fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 4096 }), async (bytes) => {
      const r = await exchange(server.port, bytes);
      assert.ok(r.closed, 'the server closed the connection');
      const { accepted } = checkReply(r.data);
      assert.ok(!accepted);
      assert.ok(r.data.length > 0, 'an ERROR frame was sent');
    }), { numRuns: RUNS, interruptAfterTimeLimit: 60_000 });
    await stillAlive();
  });

  it('survives mutated handshakes', async () => {
    await fc.assert(fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 4 }), fc.boolean(), async (ops, withRequest) => {
      const input = mutate(withRequest ? Buffer.concat([HANDSHAKE, VALID_FRAMES[0]]) : HANDSHAKE, ops);
      const r = await exchange(server.port, input);
      assert.ok(r.closed, 'the server closed the connection');
      const { accepted, errors } = checkReply(r.data);
      if (!accepted) assert.ok(errors.length > 0);
    }), { numRuns: RUNS, interruptAfterTimeLimit: 60_000 });
    await stillAlive();
  });

  it('survives mutated frames after a valid handshake', async () => {
    const framesArb = fc.array(fc.nat({ max: VALID_FRAMES.length - 1 }), { minLength: 1, maxLength: 6 }).map((ix) => Buffer.concat(ix.map((i) => VALID_FRAMES[i])));
    let errorsSeen = 0;
    await fc.assert(fc.asyncProperty(framesArb, fc.array(opArb, { minLength: 0, maxLength: 4 }), fc.uint8Array({ maxLength: 64 }), async (frames, ops, tail) => {
      const input = Buffer.concat([mutate(Buffer.concat([HANDSHAKE, frames]), ops, HANDSHAKE.length), tail]);
      const r = await exchange(server.port, input);
      assert.ok(r.closed, 'the server closed the connection');
      const { accepted, errors } = checkReply(r.data);
      assert.ok(accepted, 'the handshake itself was intact');
      errorsSeen += errors.length;
    }), { numRuns: RUNS, interruptAfterTimeLimit: 60_000 });
    assert.ok(errorsSeen > 0, 'malformed frames were answered with ERROR frames');
    await stillAlive();
  });

  it('answers structurally hostile frames with a specific ERROR', async () => {
    const hostile: [string, Buffer, RegExp][] = [
      ['huge length', Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0x10, 0, 0, 0, 0, 0, 0]), /exceeds/],
      ['unknown code', Buffer.from([0, 0, 0, 8, 0xbe, 0xef, 0, 0, 0, 0, 0, 0]), /unknown message code 0xbeef/],
      ['truncated frame', frame('REQUEST', { id: 5 }, Buffer.alloc(1000)).subarray(0, 500), /middle of a frame/],
      ['bad stream header', frame('STREAM_DATA', { stream: 'x' }, Buffer.alloc(4)), /stream id/],
      ['header is a string', Buffer.concat([Buffer.from([0, 0, 0, 8 + 5, 0, 0x10, 0, 0, 0, 0, 0, 5]), Buffer.from('"abc"')]), /not a JSON object/],
    ];
    for (const [name, bytes, re] of hostile) {
      const r = await exchange(server.port, Buffer.concat([HANDSHAKE, bytes]));
      const { accepted, errors } = checkReply(r.data);
      assert.ok(accepted, name);
      assert.equal(errors.length, 1, name);
      assert.equal(errors[0].header.code, 'bad-frame', name);
      assert.match(String(errors[0].header.message), re, name);
    }
    await stillAlive();
    assert.ok(refused > 0, 'refusals were reported');
  });

  it('a keyed node survives random bytes and mutated TLS records', async () => {
    const key = generateKey();
    const tlsServer = await listen(HOST, 0, { key, node: 'fuzz-tls', timeoutMs: 2000, onConnection: (c) => c.handle('REQUEST', () => ({ header: { ok: 1 } })) });
    try {
      // A real ClientHello to mutate: capture what a keyed client sends first.
      const hello = await new Promise<Buffer>((resolve) => {
        const cap = net.createServer((s) => s.once('data', (d) => { resolve(d); s.destroy(); cap.close(); }));
        cap.listen(0, HOST, () => { connect(HOST, (cap.address() as net.AddressInfo).port, { key, timeoutMs: 1000 }).catch(() => {}); });
      });
      await fc.assert(fc.asyncProperty(fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 2048 }).map((b) => Buffer.from(b)), fc.array(opArb, { minLength: 1, maxLength: 3 }).map((ops) => mutate(hello, ops))), async (bytes) => {
        const r = await exchange(tlsServer.port, bytes);
        assert.ok(r.closed, 'the server closed the connection');
        assert.ok(!r.data.includes(MAGIC), 'nothing ferry-level leaks before TLS');
      }), { numRuns: RUNS / 2, interruptAfterTimeLimit: 60_000 });
      const c = await connect(HOST, tlsServer.port, { key });
      assert.equal((await c.request('REQUEST', {})).header.ok, 1);
      c.destroy();
    } finally { await tlsServer.close(); }
  });
});
