// How a migration's destination should pre-fault its memory (src/memory/prefault.ts):
// bursts of 4 MiB over loopback TCP, read in place (as socket-input.ts reads page
// bytes) into a fresh guest memory pre-faulted each way, each burst into pages no
// burst has used before; and into one reused buffer, the bare burst's way.
//
// Methods: kernel (reads of /dev/zero), touch (a JavaScript write a page), both (the
// default of src/memory/prefault.ts), and the reused buffer as the limit.
//
// usage: node --import tsx bench/prefault.ts [reps] [--tls]   (default 11 per method; TLS-PSK)
import { fork } from 'node:child_process';
import net from 'node:net';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { prefault, type PrefaultMethod } from '../src/memory/prefault.ts';
import { newGuestMemory } from '../src/vm/process.ts';
import { clientTlsOptions, generateKey, serverTlsOptions } from '../src/transport/tls.ts';
import { median } from './util.ts';

const MiB = 1 << 20, BURST = 4 * MiB, SLOT = 8 * MiB;

if (process.argv[2] === '--send') {
  const data = Buffer.alloc(BURST, 7);
  // Each 1 MiB write waits for the one before to drain: with more queued, a TLS socket here
  // moves a 4 MiB burst in ~16 ms instead of ~3.3 (tmpx: 4 MiB written at once).
  const onSocket = async (s: net.Socket) => {
    s.setNoDelay(true);
    s.once('data', () => s.end());
    for (let o = 0; o < BURST; o += MiB) if (!s.write(data.subarray(o, o + MiB))) await new Promise((r) => s.once('drain', r));
  };
  const key = process.argv[3];
  const server = key ? tls.createServer(serverTlsOptions(Buffer.from(key, 'hex'), 10_000), onSocket) : net.createServer(onSocket);
  server.listen(0, '127.0.0.1', () => process.send!((server.address() as net.AddressInfo).port));
} else {
  const reps = Number(process.argv[2] ?? 11);
  const secure = process.argv.includes('--tls');
  const key = generateKey();
  const sender = fork(fileURLToPath(import.meta.url), ['--send', ...(secure ? [key.toString('hex')] : [])], { execArgv: ['--import', 'tsx'] });
  const port = await new Promise<number>((r) => sender.once('message', (m) => r(m as number)));
  const memory = new Uint8Array(newGuestMemory().buffer);
  const scratch = Buffer.allocUnsafe(MiB);
  let slot = 0;

  /** One burst read into memory[base...] (or the scratch buffer): ms from its first read to its last. */
  const burst = (base: number | null) => new Promise<number>((done, fail) => {
    let got = 0, t0 = 0, ms = 0;
    const opts = {
      port, host: '127.0.0.1', onread: {
        buffer: () => (base === null || got >= BURST ? scratch : memory.subarray(base + got, base + Math.min(BURST, got + MiB))),
        callback: (n: number) => {
          if (!t0) t0 = performance.now();
          got += n;
          if (got >= BURST && !ms) { ms = performance.now() - t0; s.write('x'); }
          return true;
        },
      },
    };
    const s: net.Socket = secure ? tls.connect({ ...clientTlsOptions(key), ...opts }) : net.connect(opts);
    s.on('error', fail);
    s.on('close', () => done(ms));
  });

  const rows: [string, number[]][] = [];
  for (const method of ['kernel', 'touch', 'both', 'reused buffer'] as const) {
    const ms: number[] = [];
    for (let i = 0; i < reps; i++) {
      if (method === 'reused buffer') { ms.push(await burst(null)); continue; }
      const base = slot++ * SLOT;
      await prefault(memory.subarray(base), BURST, () => true, method as PrefaultMethod);
      ms.push(await burst(base));
    }
    rows.push([method, ms]);
  }
  sender.kill();
  console.log(`bursts of 4 MiB over loopback ${secure ? 'TLS-PSK' : 'TCP'} read in place into a fresh guest memory, median of ${reps}:`);
  for (const [method, ms] of rows) {
    const m = median(ms);
    console.log(`  ${method.padEnd(14)} ${m.toFixed(2)} ms  ${(BURST / 1e6 / (m / 1e3)).toFixed(0)} MB/s`);
  }
  const [k, t] = [median(rows[0]![1]), median(rows[1]![1])];
  console.log(`  touched from JavaScript over both ways (ferry's): ${(t / median(rows[2]![1])).toFixed(2)}x the time; over a kernel copy alone ${(t / k).toFixed(2)}x`);
}
