// Fuzzed frames against a real node daemon (a separate OS process, no key, so the
// frames reach the node's handlers): every message code, headers built from the
// fields the node reads (pids, migration ids, sequence numbers, offsets, methods,
// file ops) with hostile values, random bodies. The node must answer every request
// with a RESPONSE or an ERROR, never crash, and keep serving.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import fc from 'fast-check';
import { CODES, encodeFrame, encodePreamble, FrameDecoder, MAGIC, resolveCode, type CodeName } from '../src/transport/index.ts';
import { call, connectCluster } from '../src/node/client.ts';
import { rawExchange } from './helpers/raw-socket.ts';
import { startNode, type ClusterNode } from './helpers/cluster.ts';
import { tempDir } from './helpers/ferry.ts';

const RUNS = Number(process.env.FERRY_FUZZ_RUNS ?? 150);
const CODE_NAMES = (Object.keys(CODES) as CodeName[]).filter((n) => n !== 'HELLO' && n !== 'HELLO_ACK');
const KEYS = ['id', 'mid', 'pid', 'seq', 'fd', 'offset', 'eof', 'method', 'to', 'session', 'stream', 'sha256', 'pageSize', 'node',
  'stdinOffset', 'code', 'upload', 'op', 'path', 'h', 'len', 'pos', 'scope', 'program', 'args', 'dirs', 'env', 'moduleStream', 'progress', 'algorithm'];
const value = fc.oneof(
  fc.constantFrom('n/1', 'fuzz/1', 'x', '', '../../etc/passwd', 'a'.repeat(70_000), 'ps', 'run', 'migrate', 'kill', 'locate', 'checkpoint', 'restore', 'migrations', 'open', 'read', 'total-copy', '0'.repeat(64)),
  fc.string({ maxLength: 20 }), fc.integer(), fc.constantFrom(-1, 0, 4096, 2 ** 31, 2 ** 53, Number.MAX_SAFE_INTEGER), fc.boolean(), fc.constant(null),
  fc.array(fc.string({ maxLength: 8 }), { maxLength: 4 }), fc.dictionary(fc.string({ maxLength: 4 }), fc.string({ maxLength: 4 }), { maxKeys: 3 }),
);
const frameArb = fc.record({
  code: fc.constantFrom(...CODE_NAMES),
  header: fc.dictionary(fc.constantFrom(...KEYS), value, { maxKeys: 8 }),
  body: fc.uint8Array({ maxLength: 600 }),
  request: fc.boolean(),
});

describe('fuzzing a node daemon', { timeout: 600_000 }, () => {
  let node: ClusterNode;
  let tmp: ReturnType<typeof tempDir>;
  before(async () => {
    tmp = tempDir('ferry-fuzz-');
    node = await startNode({ name: 'fuzz', dataDir: join(tmp.path, 'fuzz') });
  });
  after(async () => { node.child.kill('SIGTERM'); await node.exited; tmp.cleanup(); });

  async function alive(): Promise<void> {
    assert.equal(node.child.exitCode, null, `the node exited: ${node.log().slice(-2000)}`);
    const c = await connectCluster({ addr: node.addr });
    try { assert.equal((await call(c, 'status', {}, undefined, 5000)).name, 'fuzz'); } finally { c.destroy(); }
  }

  it('answers every fuzzed request with a RESPONSE or an ERROR and stays up', async () => {
    const port = Number(node.addr.split(':')[1]);
    const hello = Buffer.concat([encodePreamble(), encodeFrame(resolveCode('HELLO'), { node: 'fuzzer', role: 'node', version: 1, capabilities: ['ferry-node/1'], requires: [] }, undefined)]);
    let requests = 0, answered = 0;
    await fc.assert(fc.asyncProperty(fc.array(frameArb, { minLength: 1, maxLength: 5 }), async (frames) => {
      const ids: number[] = [];
      const bytes = frames.map((f, i) => {
        const spec = resolveCode(f.code);
        const header: Record<string, unknown> = { ...f.header };
        if (f.request && spec.header) { header.id = 1000 + i; ids.push(1000 + i); }
        return encodeFrame(spec, spec.header ? header : undefined, spec.body ? f.body : undefined);
      });
      const r = await rawExchange('127.0.0.1', port, Buffer.concat([hello, ...bytes]), 8000);
      assert.ok(r.data.length >= 10 && r.data.subarray(0, 8).equals(MAGIC), 'the node answered the handshake');
      const replies = new FrameDecoder({ maxFrameBytes: 64 << 20 } as never).push(r.data.subarray(10));
      assert.equal(replies[0]?.name, 'HELLO_ACK');
      for (const rep of replies) if (rep.name === 'ERROR') { assert.equal(typeof rep.header.code, 'string'); assert.equal(typeof rep.header.message, 'string'); }
      requests += ids.length;
      answered += ids.filter((id) => replies.some((x) => x.header.re === id)).length;
    }), { numRuns: RUNS, interruptAfterTimeLimit: 240_000 });
    await alive();
    assert.ok(requests > 0 && answered > 0, `requests were answered (${answered} of ${requests})`);
    assert.doesNotMatch(node.log(), /internal error/, 'no unhandled error in the node');
  });
});
