// How a sender's write pattern sets a 4 MiB burst's time over loopback TLS-PSK (and plain
// TCP): 1 MiB batches, each a small head and a body from a guest memory, as a migration's
// page batches go (src/transport/connection.ts). Per pattern, the median of the sender's time
// (first write to the receiver's 1-byte answer), of the receiver's (first read to last), and
// of the first batch's write call alone (a TLS socket encrypts inside it).
//
// Patterns: `cork` (head and body corked: one writev), `plain` (two writes); `ahead N`: the
// sender waits for 'drain' once more than N KiB are queued (-1: only when write() says so).
// `concat`: head and body copied into a new buffer, one write; `reuse`: copied into one buffer
// allocated once, written again after the last write's callback; `slice N`: the head, then the
// body in writes of N KiB, no write issued while two are pending (what connection.ts does over
// TLS since session 16, N = 256). Over TLS, Node copies what a writev (or writes queued behind
// one in flight) hands it into a new buffer, and new memory costs ~11 us per 4 KiB page at first
// touch here: cork and concat pay it, slice and reuse do not.
//
// usage: node --import tsx bench/write-pattern.ts [reps] [--tcp]   (default 11 per pattern)
import { fork } from 'node:child_process';
import crypto from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { newGuestMemory } from '../src/vm/process.ts';
import { clientTlsOptions, generateKey, serverTlsOptions } from '../src/transport/tls.ts';
import { median } from './util.ts';

const MiB = 1 << 20, BURST = 4 * MiB, HEAD = 1100;
const PATTERNS = [['cork', -1], ['cork', 1024], ['cork', 2048], ['plain', 1024], ['plain', 2048], ['plain', 4096], ['concat', 1024], ['reuse', 0], ['slice', 64], ['slice', 256], ['slice', 1024]] as const;

if (process.argv[2] === '--send') {
  const [, , , keyHex, cork, aheadKiB] = process.argv;
  const memory = new Uint8Array(newGuestMemory().buffer);
  for (let o = 0; o < BURST; o += 65536) crypto.randomFillSync(memory, o, 65536);
  const one = Buffer.alloc(HEAD + MiB); // reuse: one buffer, written again once the last write's callback came
  const head = Buffer.alloc(HEAD, 1), ahead = Number(aheadKiB) * 1024;
  const onSocket = async (s: net.Socket) => {
    const answered = new Promise((r) => s.once('data', r));
    const t0 = performance.now();
    let firstWrite = 0;
    for (let o = 0; o < BURST; o += MiB) {
      const w0 = performance.now();
      let ok: boolean;
      if (cork === 'slice') {
        // Head and slices of `aheadKiB` KiB, each alone: no write while two are pending.
        const pending: Promise<unknown>[] = [];
        const alone = async (b: Uint8Array) => { if (pending.length === 2) await pending.shift(); pending.push(new Promise((r) => s.write(b, r))); };
        await alone(head);
        for (let k = o; k < o + MiB; k += ahead) await alone(memory.subarray(k, Math.min(k + ahead, o + MiB)));
        if (pending.length === 2) await pending[0];
        ok = true;
      } else if (cork === 'concat') ok = s.write(Buffer.concat([head, memory.subarray(o, o + MiB)]));
      else if (cork === 'reuse') {
        one.set(head); one.set(memory.subarray(o, o + MiB), HEAD);
        await new Promise((r) => s.write(one, r));
        ok = true;
      } else {
        if (cork === 'cork') s.cork();
        s.write(head);
        ok = s.write(memory.subarray(o, o + MiB));
        if (cork === 'cork') s.uncork();
      }
      if (o === 0) firstWrite = performance.now() - w0;
      if (cork !== 'slice' && (ahead < 0 ? !ok : s.writableLength > ahead && s.writableNeedDrain)) await new Promise((r) => s.once('drain', r));
    }
    await answered;
    process.send!({ ms: performance.now() - t0, firstWrite });
    s.end();
  };
  const server = keyHex ? tls.createServer(serverTlsOptions(Buffer.from(keyHex, 'hex'), 10_000), onSocket) : net.createServer(onSocket);
  server.listen(0, '127.0.0.1', () => process.send!({ port: (server.address() as net.AddressInfo).port }));
} else {
  const reps = Number(process.argv[2] ?? 11);
  const secure = !process.argv.includes('--tcp');
  const key = generateKey();
  const buf = Buffer.allocUnsafe(MiB);
  console.log(`a 4 MiB burst in 1 MiB batches (a ${HEAD}-byte head and a body) over loopback ${secure ? 'TLS-PSK' : 'TCP'}, median of ${reps}:`);
  for (const [cork, ahead] of PATTERNS) {
    const sender = fork(fileURLToPath(import.meta.url), ['--send', secure ? key.toString('hex') : '', cork, String(ahead)], { execArgv: ['--import', 'tsx'] });
    const messages: { port?: number; ms?: number; firstWrite?: number }[] = [];
    let wake = () => {};
    sender.on('message', (m: (typeof messages)[number]) => { messages.push(m); wake(); });
    const next = async () => { while (!messages.length) await new Promise<void>((r) => { wake = r; }); return messages.shift()!; };
    const { port } = await next();
    const send: number[] = [], recv: number[] = [], first: number[] = [];
    for (let i = 0; i < reps; i++) {
      await new Promise<void>((done, fail) => {
        let got = 0, t0 = 0;
        const onread = { buffer: buf, callback: (n: number) => { t0 ||= performance.now(); got += n; if (got === BURST + 4 * HEAD) { recv.push(performance.now() - t0); s.write('k'); } return true; } };
        const opts = { host: '127.0.0.1', port: port!, onread };
        const s: net.Socket = secure ? tls.connect({ ...clientTlsOptions(key), ...opts }) : net.connect(opts);
        s.on('error', fail);
        s.on('end', () => s.end());
        s.on('close', () => done());
      });
      const m = await next();
      send.push(m.ms!); first.push(m.firstWrite!);
    }
    sender.kill();
    const f = (xs: number[]) => `${median(xs).toFixed(2)} ms`;
    const knob = cork === 'slice' ? 'slices' : cork === 'reuse' ? '' : 'ahead';
    console.log(`  ${cork.padEnd(6)} ${knob.padEnd(6)} ${knob ? `${String(ahead).padStart(4)} KiB` : '        '}  sender ${f(send)}  receiver ${f(recv)}  first batch's write call ${f(first)}`);
  }
}
