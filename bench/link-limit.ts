// The physical limit of an unshaped loopback migration: one stream of bytes from
// one OS process to another on this machine, as fast as Node moves it, over
// TLS-PSK with ferry's own options (src/transport/tls.ts) and over plain TCP.
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

/** This process receives; a child process sends `mb` MiB in 1 MiB writes. */
function oneStream(mb: number, secure: boolean): Promise<{ mbs: number; cipher: string }> {
  const key = generateKey();
  return new Promise((resolve, reject) => {
    const onSocket = (sock: net.Socket) => {
      let n = 0, t0 = 0;
      sock.on('data', (d: Buffer) => { if (!t0) t0 = performance.now(); n += d.length; });
      sock.on('error', reject);
      sock.on('end', () => {
        const secs = (performance.now() - t0) / 1000;
        server.close();
        resolve({ mbs: n / MB / secs, cipher: sock instanceof tls.TLSSocket ? (sock.getCipher()?.name ?? '') : 'none' });
      });
    };
    const server = secure ? tls.createServer(serverTlsOptions(key, 10_000), onSocket) : net.createServer(onSocket);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      const child = fork(HERE, ['--send', String(port), String(mb), secure ? key.toString('hex') : ''], { execArgv: ['--import', 'tsx'] });
      child.on('exit', (code) => { if (code !== 0) { server.close(); reject(new Error(`link-limit sender exited with ${code}`)); } });
    });
  });
}

async function send(port: number, mb: number, keyHex: string): Promise<void> {
  const sock = keyHex
    ? tls.connect({ ...clientTlsOptions(Buffer.from(keyHex, 'hex')), host: '127.0.0.1', port })
    : net.connect({ host: '127.0.0.1', port });
  await new Promise<void>((r, j) => { sock.once(keyHex ? 'secureConnect' : 'connect', () => r()); sock.once('error', j); });
  const chunk = crypto.randomBytes(1 << 20);
  for (let i = 0; i < mb; i++) if (!sock.write(chunk)) await new Promise((r) => sock.once('drain', r));
  await new Promise<void>((r) => sock.end(r));
}

if (process.argv[2] === '--send') {
  await send(Number(process.argv[3]), Number(process.argv[4]), process.argv[5] ?? '');
  process.exit(0);
} else if (process.argv[1] === HERE) {
  const l = await measureLinkLimit(Number(process.argv[2] ?? 256));
  console.log(`one stream between two processes on loopback: TLS-PSK (${l.cipher}) ${l.tlsMBs.toFixed(0)} MB/s, plain TCP ${l.tcpMBs.toFixed(0)} MB/s`);
}
