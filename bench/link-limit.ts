// The physical limit of an unshaped loopback migration: one stream of bytes from
// one OS process to another on this machine, as fast as Node moves it (the
// receiver dials and reads into one reused buffer, as a migration's destination
// does), over TLS-PSK with ferry's own options (src/transport/tls.ts) and over
// plain TCP.
// A migration cannot beat the stream it rides on; the migrate section prints its
// loopback throughput beside these, measured in the same run.
//
// usage (standalone): node --import tsx bench/link-limit.ts [MB]
import { fork } from 'node:child_process';
import crypto from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { clientTlsOptions, generateKey, serverTlsOptions } from '../src/transport/tls.ts';

export interface LinkLimit { tlsMBs: number; tcpMBs: number; cipher: string }

const HERE = fileURLToPath(import.meta.url);
const MB = 1e6;

/** Median MB/s (10^6 bytes) of `reps` transfers of `mb` MiB each, TLS and TCP interleaved. */
export async function measureLinkLimit(mb = 256, reps = 3): Promise<LinkLimit> {
  const tlsRuns: number[] = [], tcpRuns: number[] = [];
  let cipher = '';
  for (let i = 0; i < reps; i++) {
    const t = await oneStream(mb, true);
    tlsRuns.push(t.mbs); cipher = t.cipher;
    tcpRuns.push((await oneStream(mb, false)).mbs);
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  return { tlsMBs: med(tlsRuns), tcpMBs: med(tcpRuns), cipher };
}

/** This process receives, reading into one reused buffer as a ferry node does on the connections
 *  it dials (src/transport/socket-input.ts); a child process listens and sends `mb` MiB in 1 MiB writes. */
function oneStream(mb: number, secure: boolean): Promise<{ mbs: number; cipher: string }> {
  const key = generateKey();
  return new Promise((resolve, reject) => {
    const child = fork(HERE, ['--send', String(mb), secure ? key.toString('hex') : ''], { execArgv: ['--import', 'tsx'] });
    child.on('exit', (code) => { if (code !== 0) reject(new Error(`link-limit sender exited with ${code}`)); });
    child.once('message', (port) => {
      let n = 0, t0 = 0;
      const onread = { buffer: Buffer.allocUnsafe(1 << 20), callback: (k: number) => { if (!t0) t0 = performance.now(); n += k; return true; } };
      const opts = { host: '127.0.0.1', port: Number(port), onread };
      const sock = secure ? tls.connect({ ...clientTlsOptions(key), ...opts }) : net.connect(opts);
      sock.on('error', reject);
      sock.on('end', () => {
        const secs = (performance.now() - t0) / 1000;
        resolve({ mbs: n / MB / secs, cipher: sock instanceof tls.TLSSocket ? (sock.getCipher()?.name ?? '') : 'none' });
        sock.end();
      });
    });
  });
}

async function send(mb: number, keyHex: string): Promise<void> {
  const onSocket = async (sock: net.Socket) => {
    const chunk = crypto.randomBytes(1 << 20);
    for (let i = 0; i < mb; i++) if (!sock.write(chunk)) await new Promise((r) => sock.once('drain', r));
    await new Promise<void>((r) => sock.end(r));
    server.close();
  };
  const server = keyHex ? tls.createServer(serverTlsOptions(Buffer.from(keyHex, 'hex'), 10_000), onSocket) : net.createServer(onSocket);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  process.send!((server.address() as net.AddressInfo).port);
  await new Promise((r) => server.on('close', r));
}

if (process.argv[2] === '--send') {
  await send(Number(process.argv[3]), process.argv[4] ?? '');
  process.exit(0);
} else if (process.argv[1] === HERE) {
  const l = await measureLinkLimit(Number(process.argv[2] ?? 256));
  console.log(`one stream between two processes on loopback: TLS-PSK (${l.cipher}) ${l.tlsMBs.toFixed(0)} MB/s, plain TCP ${l.tcpMBs.toFixed(0)} MB/s`);
}
