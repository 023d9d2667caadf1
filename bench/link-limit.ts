// The physical limit of an unshaped loopback migration: the same bytes moved
// from one OS process to another on this machine by Node alone, with nothing
// of ferry around them, over TLS-PSK with ferry's own options
// (src/transport/tls.ts) and over plain TCP.
//
// Measured as a migration moves its pages: a burst of N MiB, N the size of the
// migrated address space, on a fresh connection (a migration dials one), read
// from a memory of N MiB (not one hot buffer written again and again: a
// migration reads every byte of the guest's memory once, from cache-cold RAM),
// sent in 1 MiB writes; the receiver dials and reads into one reused buffer, as
// a migration's destination does (socket-input.ts). The time runs from the
// first write until the sender learns the receiver has every byte (a 1-byte
// answer: one loopback round trip, ~0.05 ms).
// A migration cannot beat the burst it rides on; the migrate section prints its
// loopback throughput beside these, measured in the same run.
//
// usage (standalone): node --import tsx bench/link-limit.ts [MB ...]
import { fork } from 'node:child_process';
import crypto from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { clientTlsOptions, generateKey, serverTlsOptions } from '../src/transport/tls.ts';

/** MB/s (10^6 bytes) of one burst of `mb` MiB, median of the repetitions, per link. */
export interface LinkLimit { mb: number; tlsMBs: number; tcpMBs: number }
export interface LinkLimits { cipher: string; bursts: LinkLimit[] }

const HERE = fileURLToPath(import.meta.url);
const MB = 1e6, MiB = 1 << 20;

/** More repetitions of short bursts (a 4 MiB one takes ~3 ms: a busy machine moves one by ms). */
const repsFor = (mb: number) => (mb <= 16 ? 11 : mb <= 128 ? 5 : 3);

/** Bursts of each size, TLS and TCP, each in a sender process of its own (its memory fresh). */
export async function measureLinkLimits(sizes: number[]): Promise<LinkLimits> {
  let cipher = '';
  const bursts: LinkLimit[] = [];
  for (const mb of sizes) {
    const tlsRuns: number[] = [], tcpRuns: number[] = [];
    for (const secure of [true, false]) {
      const r = await bursts_(mb, repsFor(mb), secure);
      (secure ? tlsRuns : tcpRuns).push(...r.mbs);
      if (secure) cipher = r.cipher;
    }
    bursts.push({ mb, tlsMBs: median(tlsRuns), tcpMBs: median(tcpRuns) });
  }
  return { cipher, bursts };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** A child process listens and sends `reps` bursts of `mb` MiB, each on a connection this process dials. */
function bursts_(mb: number, reps: number, secure: boolean): Promise<{ mbs: number[]; cipher: string }> {
  const key = generateKey();
  return new Promise((resolve, reject) => {
    const child = fork(HERE, ['--send', String(mb), String(reps), secure ? key.toString('hex') : ''], { execArgv: ['--import', 'tsx'] });
    const mbs: number[] = [];
    let cipher = 'none';
    child.on('exit', (code) => { if (code !== 0) reject(new Error(`link-limit sender exited with ${code}`)); else resolve({ mbs, cipher }); });
    child.on('message', (m: { port?: number; ms?: number }) => {
      if (m.ms !== undefined) { mbs.push((mb * MiB) / MB / (m.ms / 1000)); return; }
      // One connection per burst: the receiver answers one byte once it has them all.
      let n = 0;
      const want = mb * MiB;
      const onread = { buffer: Buffer.allocUnsafe(MiB), callback: (k: number) => { n += k; if (n === want) sock.write('k'); return true; } };
      const opts = { host: '127.0.0.1', port: m.port!, onread };
      const sock: net.Socket = secure ? tls.connect({ ...clientTlsOptions(key), ...opts }) : net.connect(opts);
      sock.on('error', reject);
      sock.on('end', () => { if (sock instanceof tls.TLSSocket) cipher = sock.getCipher()?.name ?? ''; sock.end(); });
    });
  });
}

/** The sender: a memory of `mb` MiB of random bytes (as a guest's: a SharedArrayBuffer), sent whole
 *  on each connection, in 1 MiB writes. */
async function send(mb: number, reps: number, keyHex: string): Promise<void> {
  const memory = new Uint8Array(new SharedArrayBuffer(mb * MiB));
  for (let o = 0; o < memory.length; o += 65536) crypto.randomFillSync(memory, o, 65536);
  let left = reps;
  const onSocket = async (sock: net.Socket) => {
    const acked = new Promise((r) => sock.once('data', r));
    const t0 = performance.now();
    for (let o = 0; o < memory.length; o += MiB) if (!sock.write(memory.subarray(o, o + MiB))) await new Promise((r) => sock.once('drain', r));
    await acked;
    process.send!({ ms: performance.now() - t0 });
    sock.end();
    if (--left === 0) server.close(); else dialAgain();
  };
  const server = keyHex ? tls.createServer(serverTlsOptions(Buffer.from(keyHex, 'hex'), 10_000), onSocket) : net.createServer(onSocket);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const dialAgain = () => process.send!({ port: (server.address() as net.AddressInfo).port });
  dialAgain();
  await new Promise((r) => server.on('close', r));
}

if (process.argv[2] === '--send') {
  await send(Number(process.argv[3]), Number(process.argv[4]), process.argv[5] ?? '');
  process.exit(0);
} else if (process.argv[1] === HERE) {
  const sizes = process.argv.slice(2).map(Number);
  const l = await measureLinkLimits(sizes.length ? sizes : [4, 64, 512]);
  for (const b of l.bursts) console.log(`one burst of ${b.mb} MiB between two processes on loopback: TLS-PSK (${l.cipher}) ${b.tlsMBs.toFixed(0)} MB/s, plain TCP ${b.tcpMBs.toFixed(0)} MB/s`);
}
