// Compression of page batches (`ferry migrate --compress`, issue 4): the codecs on
// their own (round trips, malformed input refused before anything is allocated
// or written), and over real daemons on a 100 Mb/s link: a compressible workload
// sends fewer bytes with the same output, for every algorithm; a malformed
// compressed batch is refused with a clear error and the process stays on the
// source; a codec the destination does not know is refused at setup.
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { ClusterClient, startCluster, startNode } from './helpers/cluster.ts';
import { clusterRun, reference, type Outcome } from './helpers/modes.ts';
import { prepareAllVariants, WORKLOADS, type Workload } from './helpers/workloads.ts';
import { rawExchange } from './helpers/raw-socket.ts';
import { tempDir } from './helpers/ferry.ts';
import { BatchCompressor, compressBatch, decompressBatch, MAX_RAW_BATCH, SKIP_AFTER_POOR, type Codec } from '../src/memory/page-codec.ts';
import { encodePageBatch } from '../src/memory/page-batch.ts';
import { encodeFrame, encodePreamble, FrameDecoder, resolveCode } from '../src/transport/index.ts';
import type { MigrationMetrics } from '../src/migration/index.ts';

const pageinc: Workload = { ...WORKLOADS.find((w) => w.name === 'pageinc')!, args: ['16', '250000'] };

function same(actual: Outcome, expected: Outcome, what: string): void {
  assert.equal(actual.exitCode, expected.exitCode, `${what}: exit code (stderr: ${actual.stderr.slice(-800)})`);
  assert.equal(actual.stdout, expected.stdout, `${what}: stdout`);
}

describe('page codecs', () => {
  // A batch of pageinc-like pages: a few bytes each, the rest zero.
  const mem = new Uint8Array(64 * 4096);
  for (let p = 0; p < 64; p++) { mem[p * 4096] = p; mem[p * 4096 + 8] = p * 7; }
  const raw = encodePageBatch(mem, 4096, Array.from({ length: 64 }, (_, i) => i));

  for (const codec of ['deflate', 'lz4'] as Codec[]) {
    it(`${codec}: a batch comes back byte for byte, much smaller on the wire`, async () => {
      const z = await compressBatch(codec, raw);
      assert.ok(z && z.length < raw.length / 10, `${z?.length} of ${raw.length} bytes`);
      assert.ok(decompressBatch(codec, z, raw.length).equals(raw));
    });

    it(`${codec}: truncated, mis-sized or oversized batches are refused with a clear error`, async () => {
      const z = (await compressBatch(codec, raw))!;
      assert.throws(() => decompressBatch(codec, z.subarray(0, z.length >> 1), raw.length), /malformed compressed page batch/);
      assert.throws(() => decompressBatch(codec, z, raw.length - 1), /malformed compressed page batch/);
      assert.throws(() => decompressBatch(codec, z, MAX_RAW_BATCH + 1), /claims/);
      const t0 = performance.now();
      const lying = Buffer.from(z);
      if (codec === 'lz4') lying.writeUInt32LE(0xfffffff0, 0); // a size prefix of ~4 GB: refused before lz4 allocates it
      else lying.fill(0xff, 0, 4);
      assert.throws(() => decompressBatch(codec, lying, raw.length), /malformed compressed page batch/);
      assert.ok(performance.now() - t0 < 2000, 'refused at once');
    });
  }

  const noise = Buffer.alloc(64 * 1024);
  for (let i = 0, x = 1; i < noise.length; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; noise[i] = x & 0xff; }

  it('incompressible bytes are sent as they are', async () => {
    assert.equal(await compressBatch('deflate', noise), null);
    assert.equal(await compressBatch('lz4', noise), null);
  });

  it('a batch that does not shrink by a fifth turns compression off for the next batches, then it is tried again', async () => {
    const c = new BatchCompressor('deflate');
    assert.ok(await c.compress(raw), 'compressible: compressed');
    assert.equal(await c.compress(noise), null);
    // Now even a compressible batch goes as it is, SKIP_AFTER_POOR times.
    for (let i = 0; i < SKIP_AFTER_POOR; i++) assert.equal(await c.compress(raw), null, `skipped ${i}`);
    assert.ok(await c.compress(raw), 'tried again, and it pays');
    assert.ok(await c.compress(raw));
    assert.equal(await new BatchCompressor('none').compress(raw), null);
  });
});

describe('compressed migrations', { timeout: 2_400_000 }, () => {
  let expected: Outcome;
  before(async () => { await prepareAllVariants(); expected = await reference(pageinc); assert.equal(expected.exitCode, 0); });

  it('pageinc 16 MB over 100 Mb/s, every algorithm: fewer bytes with deflate and lz4 than without, output identical', async () => {
    const c = await startCluster(2, { names: ['a', 'b'], extraArgs: ['--link-bandwidth', '100mbit'] });
    try {
      const client = ClusterClient.for(c);
      const runs: { algorithm: string; compress: Codec }[] = [
        { algorithm: 'total-copy', compress: 'none' }, { algorithm: 'total-copy', compress: 'deflate' }, { algorithm: 'total-copy', compress: 'lz4' },
        { algorithm: 'pre-copy', compress: 'deflate' }, { algorithm: 'post-copy', compress: 'lz4' }, { algorithm: 'assisted-post-copy', compress: 'deflate' },
      ];
      const { outcome, during: ms } = await clusterRun(c, client, pageinc, { node: 'a' }, async (pid) => {
        const out: MigrationMetrics[] = [];
        let at = 'a';
        for (const r of runs) {
          const to = at === 'a' ? 'b' : 'a';
          let m: MigrationMetrics;
          try { m = await client.migrate(pid, to, { algorithm: r.algorithm, ...(r.compress !== 'none' ? { compress: r.compress } : {}) }); } catch (e) {
            if ((e as { code?: string }).code === 'no-such-process') break; // it ended
            throw e;
          }
          if (m.error?.code === 'process-ended') break;
          assert.equal(m.state, 'completed', `${r.algorithm} ${r.compress}: ${m.error?.message}`);
          out.push(m);
          at = to;
        }
        return out;
      });
      same(outcome, expected, 'compressed migrations');
      assert.doesNotMatch(outcome.stdout, /FAIL/);
      for (const m of ms) {
        console.log(`# ${m.algorithm} ${m.compression.codec}: ${m.bytes.total - m.bytes.setup} bytes after setup, page batches ${m.compression.rawBytes} -> ${m.compression.wireBytes} (ratio ${m.compression.ratio?.toFixed(1)}), total ${m.totalMs?.toFixed(0)} ms, down ${m.downtimeMs?.toFixed(1)} ms`);
        assert.ok(m.compression.rawBytes > 0);
      }
      assert.ok(ms.length >= 3, `Total Copy without, with deflate, with lz4 (${ms.length} migrations before it ended)`);
      const [plain, deflate, lz4] = ms;
      assert.equal(plain!.compression.codec, 'none');
      assert.equal(plain!.compression.wireBytes, plain!.compression.rawBytes);
      for (const m of ms.slice(1)) {
        assert.ok(m.compression.ratio! > 4, `${m.algorithm} ${m.compression.codec}: ratio ${m.compression.ratio}`);
        assert.ok(m.compression.wireBytes < m.compression.rawBytes / 4);
      }
      const moved = (m: MigrationMetrics) => m.bytes.total - m.bytes.setup;
      assert.ok(moved(deflate!) < moved(plain!) / 4, `deflate: ${moved(deflate!)} bytes vs ${moved(plain!)} without`);
      assert.ok(moved(lz4!) < moved(plain!) / 4, `lz4: ${moved(lz4!)} bytes vs ${moved(plain!)} without`);
    } finally { await c.stop(); }
  });

  it('a malformed compressed batch is refused with a clear error; the process stays on the source, output identical', async () => {
    const c = await startCluster(2, { names: ['a', 'b'], extraArgs: ['--link-bandwidth', '100mbit'], env: { a: { FERRY_FAULTS: 'src-batch:corrupt' } } });
    try {
      const client = ClusterClient.for(c);
      let pid = '';
      const { outcome, during: m } = await clusterRun(c, client, pageinc, { node: 'a' }, async (p) => {
        pid = p;
        return client.migrate(p, 'b', { algorithm: 'total-copy', compress: 'deflate' });
      });
      same(outcome, expected, 'after a refused batch');
      assert.match(c.nodes[0]!.log(), /FAULT src-batch: corrupt/);
      assert.equal(m.state, 'failed');
      assert.match(m.error!.message, /malformed compressed page batch \(deflate\)/, m.error!.message);
      assert.match(c.nodes[1]!.log(), /page batch refused from a/);
      assert.doesNotMatch(c.nodes[1]!.log(), new RegExp(`${pid.replace('/', '\\/')} arrived`), 'the destination never ran it');
      assert.match(c.nodes[0]!.log(), new RegExp(`${pid.replace('/', '\\/')} exited`), 'it finished on the source');
    } finally { await c.stop(); }
  });

  it('a codec the destination does not know is refused at setup, naming it; a bad --compress is refused by the node', async () => {
    const tmp = tempDir('ferry-compress-');
    const node = await startNode({ name: 'd', dataDir: join(tmp.path, 'd') });
    try {
      const port = Number(node.addr.split(':')[1]);
      const hello = encodeFrame(resolveCode('HELLO'), { node: 'src', role: 'node', version: 1, capabilities: ['ferry-node/1'], requires: [] }, undefined);
      const setup = encodeFrame(resolveCode('MIG_SETUP'), { id: 7, mid: 'm1', pid: 'src/1', sha256: '0'.repeat(64), pageSize: 4096, algorithm: 'total-copy', compress: 'zstd' }, undefined);
      const r = await rawExchange('127.0.0.1', port, Buffer.concat([encodePreamble(), hello, setup]), 8000);
      const replies = new FrameDecoder().push(r.data.subarray(10));
      const err = replies.find((x) => x.header.re === 7);
      assert.equal(err?.name, 'ERROR');
      assert.equal(err!.header.code, 'unsupported');
      assert.match(String(err!.header.message), /compression 'zstd' is not known on d/);
    } finally { node.child.kill('SIGTERM'); await node.exited; tmp.cleanup(); }

    const c = await startCluster(2, { names: ['a', 'b'] });
    try {
      const client = ClusterClient.for(c);
      const w: Workload = { ...pageinc, args: ['4', '200000'] };
      const { during: e } = await clusterRun(c, client, w, { node: 'a' }, (p) => client.migrate(p, 'b', { compress: 'zstd' }).then(() => null, (x: Error) => x));
      assert.match(String(e?.message), /compress must be one of none, deflate, lz4/);
    } finally { await c.stop(); }
  });
});
