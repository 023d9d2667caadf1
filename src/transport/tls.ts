// TLS with a pre-shared key. With a key, every connection (peer and CLI) runs
// over TLS 1.2 with PSK cipher suites; the key is the PSK, the identity is
// 'ferry'. A peer without the key fails the TLS handshake and never reaches the
// ferry handshake. Without a key, connections are plain TCP.
//
// Why TLS 1.2: Node 20's pskCallback only works for TLS 1.2 and below (with
// TLSv1.3 the server still asks for a certificate: "no suitable signature
// algorithm"; checked on Node 20.20). Suites with an ephemeral key exchange come first,
// for forward secrecy: DHE-PSK with AES-128-GCM, then ECDHE-PSK with ChaCha20 (TLS 1.2 has
// no ECDHE-PSK suite with AES-GCM). AES-GCM first because with AES-NI it moves a third more
// bytes per CPU second than ChaCha20 here (bench/link-limit.ts: one stream between two
// processes, 1176 against 885 MB/s); the DHE exchange adds ~1 ms to a handshake. Plain PSK
// suites are the fallback.
//
// Key file: the key as hex text (64 hex digits = 32 random bytes), mode 0600.

import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import type tls from 'node:tls';
import { FerryError } from '../errors.ts';

export const PSK_IDENTITY = 'ferry';
export const PSK_CIPHERS = 'DHE-PSK-AES128-GCM-SHA256:ECDHE-PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305';
export const MIN_KEY_BYTES = 16;
export const KEY_BYTES = 32;

export type KeyInput = Buffer | Uint8Array | string;

/** A fresh random key. */
export function generateKey(bytes = KEY_BYTES): Buffer {
  if (bytes < MIN_KEY_BYTES) throw new FerryError('bad-argument', `a key needs at least ${MIN_KEY_BYTES} bytes`);
  return randomBytes(bytes);
}

/** The key as it is stored in a key file. */
export function formatKey(key: Uint8Array): string {
  return Buffer.from(key).toString('hex') + '\n';
}

/** Parse a key from hex text (whitespace ignored). */
export function parseKey(text: string, source = 'key'): Buffer {
  const hex = text.replace(/\s+/g, '');
  if (hex.length === 0) throw new FerryError('bad-key', `${source} is empty`);
  if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length % 2 !== 0) throw new FerryError('bad-key', `${source} is not hex text (expected e.g. 64 hex digits)`);
  const key = Buffer.from(hex, 'hex');
  if (key.length < MIN_KEY_BYTES) throw new FerryError('bad-key', `${source} holds ${key.length} bytes; a key needs at least ${MIN_KEY_BYTES}`);
  return key;
}

/** Read a key file. */
export function loadKey(file: string): Buffer {
  let text: string;
  try { text = readFileSync(file, 'utf8'); } catch (e) {
    throw new FerryError((e as NodeJS.ErrnoException).code === 'ENOENT' ? 'not-found' : 'bad-key', `cannot read key file ${file}: ${(e as Error).message}`, { cause: e });
  }
  return parseKey(text, `key file ${file}`);
}

/** Write a new (or the given) key to a file readable only by its owner; returns the key. */
export function writeKey(file: string, key: Uint8Array = generateKey()): Buffer {
  writeFileSync(file, formatKey(key), { mode: 0o600 });
  return Buffer.from(key);
}

/** Normalize a key given as bytes or hex text. */
export function toKey(key: KeyInput): Buffer {
  if (typeof key === 'string') return parseKey(key);
  const b = Buffer.from(key);
  if (b.length < MIN_KEY_BYTES) throw new FerryError('bad-key', `a key needs at least ${MIN_KEY_BYTES} bytes, got ${b.length}`);
  return b;
}

export function serverTlsOptions(key: Buffer, handshakeTimeoutMs: number): tls.TlsOptions {
  return {
    ciphers: PSK_CIPHERS,
    minVersion: 'TLSv1.2',
    maxVersion: 'TLSv1.2',
    handshakeTimeout: handshakeTimeoutMs,
    dhparam: 'auto', // the DHE-PSK suite's group: a well-known one that OpenSSL picks
    pskCallback: (_socket: tls.TLSSocket, identity: string) => (identity === PSK_IDENTITY ? key : null),
  };
}

export function clientTlsOptions(key: Buffer): tls.ConnectionOptions {
  return {
    ciphers: PSK_CIPHERS,
    minVersion: 'TLSv1.2',
    maxVersion: 'TLSv1.2',
    pskCallback: () => ({ psk: key, identity: PSK_IDENTITY }),
    checkServerIdentity: () => undefined, // no certificate: the PSK authenticates the server
  };
}

/** Turn a TLS-level failure into a clear FerryError. */
export function tlsError(where: string, e: Error): FerryError {
  const code = (e as NodeJS.ErrnoException).code ?? '';
  const hint = /WRONG_VERSION_NUMBER|UNKNOWN_PROTOCOL|PACKET_LENGTH/i.test(code + e.message)
    ? 'the peer does not speak TLS (it has no key?)'
    : 'wrong or missing key?';
  const reason = /SSL routines:[^:]*:([^:]+)/.exec(e.message)?.[1] ?? e.message.split('\n')[0];
  return new FerryError('auth-failed', `TLS-PSK handshake with ${where} failed (${hint}): ${reason}`, { cause: e });
}
