// The versioned handshake, run once on every new connection before any frame.
//
//   client -> server:  preamble, HELLO frame
//   server -> client:  preamble, HELLO_ACK frame  (or: preamble, ERROR frame, close)
//
// The preamble is 10 bytes: the magic "FERRYNET" (8 ASCII bytes) and a u16
// big-endian protocol version: the version of the frame layout and handshake
// that follow. It comes before any frame so that the frame layout itself can
// change in a later version.
//
// HELLO / HELLO_ACK header: { node, role, version, capabilities: string[], requires: string[] }
//   capabilities: what the sender implements; requires: what the sender needs
//   from its peer. Either side refuses a peer that lacks one of its requirements.
//
// The server refuses, with an ERROR frame { code, message } naming the problem
// and then closing: a wrong magic (checked byte by byte, so a non-ferry client is
// refused at its first wrong byte), a protocol version it does not speak, a
// malformed or missing HELLO, a missing required capability, a handshake that
// does not complete within the timeout or that the client cuts short.

import type { Duplex } from 'node:stream';
import { FerryError } from '../errors.ts';
import { CODES, resolveCode } from './codes.ts';
import { encodeFrame, FrameDecoder, type Frame, type FrameLimits, type Header } from './frame.ts';
import type { SocketInput } from './socket-input.ts';

export const MAGIC = Buffer.from('FERRYNET', 'ascii');
export const PREAMBLE_LENGTH = MAGIC.length + 2;
export const PROTOCOL_VERSION = 1;
/** Protocol versions this implementation speaks. */
export const SUPPORTED_VERSIONS: readonly number[] = [1];
/** What this transport implementation offers every peer. Higher layers may add their own. */
export const BASE_CAPABILITIES: readonly string[] = ['rpc', 'streams', 'priority', 'pages'];
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

const MAX_NAME = 256;
const MAX_CAPABILITIES = 256;

export interface HelloInfo {
  node: string;
  role: string;
  version: number;
  capabilities: string[];
  requires: string[];
}

export interface HandshakeOptions {
  /** This node's name, shown to the peer. */
  node?: string;
  /** This end's role: 'node', 'cli', ... */
  role?: string;
  /** Capabilities offered in addition to BASE_CAPABILITIES. */
  capabilities?: string[];
  /** Capabilities the peer must offer. */
  requires?: string[];
  timeoutMs?: number;
  limits?: FrameLimits;
}

export interface HandshakeResult {
  peer: HelloInfo;
  /** The decoder, holding any bytes received after the handshake frame (not yet decoded). */
  decoder: FrameDecoder;
}

export function encodePreamble(version = PROTOCOL_VERSION): Buffer {
  const b = Buffer.alloc(PREAMBLE_LENGTH);
  MAGIC.copy(b, 0);
  b.writeUInt16BE(version, MAGIC.length);
  return b;
}

function localHello(opts: HandshakeOptions): HelloInfo {
  return {
    node: opts.node ?? 'anonymous',
    role: opts.role ?? 'node',
    version: PROTOCOL_VERSION,
    capabilities: [...new Set([...BASE_CAPABILITIES, ...(opts.capabilities ?? [])])],
    requires: [...(opts.requires ?? [])],
  };
}

function isStringList(v: unknown): v is string[] {
  return Array.isArray(v) && v.length <= MAX_CAPABILITIES && v.every((s) => typeof s === 'string' && s.length > 0 && s.length <= MAX_NAME);
}

/** Validate a HELLO / HELLO_ACK header; throws FerryError('bad-hello'). */
export function parseHello(name: string, h: Header, version: number): HelloInfo {
  const bad = (what: string): never => { throw new FerryError('bad-hello', `${name} ${what}`); };
  if (typeof h.node !== 'string' || h.node.length === 0 || h.node.length > MAX_NAME) bad('needs a node name (a string of 1-256 characters)');
  if (typeof h.role !== 'string' || h.role.length === 0 || h.role.length > MAX_NAME) bad('needs a role (a string of 1-256 characters)');
  if (h.version !== version) bad(`announces version ${JSON.stringify(h.version)} but its preamble said ${version}`);
  if (!isStringList(h.capabilities)) bad('needs capabilities: a list of non-empty strings');
  if (h.requires !== undefined && !isStringList(h.requires)) bad('has malformed requires: a list of non-empty strings');
  return { node: h.node as string, role: h.role as string, version, capabilities: h.capabilities as string[], requires: (h.requires as string[] | undefined) ?? [] };
}

function missing(required: string[], offered: string[]): string[] {
  const have = new Set(offered);
  return required.filter((c) => !have.has(c));
}

function describeBytes(b: Buffer): string {
  const printable = /^[\x20-\x7e]*$/.test(b.toString('latin1'));
  return printable ? JSON.stringify(b.toString('latin1')) : `0x${b.toString('hex')}`;
}

/**
 * Reads the peer's preamble and first frame from a socket, with a timeout.
 * Pauses the socket and detaches itself when done, so the caller can take over.
 */
function readPeer(socket: Duplex, label: string, opts: HandshakeOptions, onRefuse: (e: FerryError) => void, input?: SocketInput): Promise<{ version: number; first: Frame; decoder: FrameDecoder }> {
  return new Promise((resolve, reject) => {
    const decoder = new FrameDecoder(opts.limits);
    let preamble = Buffer.alloc(0);
    let version = -1;
    let settled = false;
    const finish = (err: FerryError | undefined, value?: { version: number; first: Frame; decoder: FrameDecoder }) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (input) input.consume(null); else socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.off('close', onClose);
      socket.pause();
      if (err) { onRefuse(err); reject(err); } else resolve(value!);
    };
    const onData = (chunk: Buffer) => {
      try {
        let rest = chunk;
        if (version < 0) {
          const need = PREAMBLE_LENGTH - preamble.length;
          preamble = Buffer.concat([preamble, rest.subarray(0, need)]);
          rest = rest.subarray(need);
          const m = Math.min(preamble.length, MAGIC.length);
          if (!preamble.subarray(0, m).equals(MAGIC.subarray(0, m))) {
            if (preamble[0] === 0x15 || preamble[0] === 0x16) {
              throw new FerryError('tls-mismatch', `${label} speaks TLS: one side has a key and the other has none (both need the same --key)`);
            }
            throw new FerryError('bad-magic', `${label} is not a ferry peer: expected magic "FERRYNET", got ${describeBytes(preamble.subarray(0, m))}`);
          }
          if (preamble.length < PREAMBLE_LENGTH) return;
          version = preamble.readUInt16BE(MAGIC.length);
          if (!SUPPORTED_VERSIONS.includes(version)) {
            throw new FerryError('unsupported-version', `${label} speaks ferry protocol version ${version}; this node speaks ${SUPPORTED_VERSIONS.join(', ')}`);
          }
        }
        if (rest.length === 0) return;
        // Decode only the handshake frame: what follows it belongs to the connection (and is checked there).
        let first: Frame | undefined;
        try { decoder.feed(Buffer.from(rest)); first = decoder.read(); } catch (e) { // a copy: the chunk may be reused (socket-input.ts)
          throw new FerryError((e as FerryError).code ?? 'bad-frame', `bad handshake from ${label}: ${(e as Error).message}`);
        }
        if (first) finish(undefined, { version, first, decoder });
      } catch (e) {
        finish(e instanceof FerryError ? e : new FerryError('internal', String(e), { cause: e }));
      }
    };
    const onEnd = () => finish(new FerryError('handshake-incomplete', `${label} ended the connection during the handshake`));
    const onError = (e: Error) => finish(new FerryError('connection-failed', `connection to ${label} failed during the handshake: ${e.message}`, { cause: e }));
    const onClose = () => finish(new FerryError('connection-closed', `${label} closed the connection during the handshake`));
    const timer = setTimeout(() => finish(new FerryError('handshake-timeout', `${label} did not complete the handshake within ${opts.timeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS} ms`)), opts.timeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS);
    if (input) input.consume(onData); else socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.resume();
  });
}

function errorFrame(code: string, message: string): Buffer {
  return encodeFrame(resolveCode('ERROR'), { code, message: message.slice(0, 4096) }, undefined);
}

/** Send an ERROR frame (after our preamble, if not yet sent), then close the socket. */
export function refuse(socket: Duplex, err: FerryError, sendPreamble: boolean): void {
  if (socket.destroyed) return;
  const parts = sendPreamble ? [encodePreamble(), errorFrame(err.code, err.message)] : [errorFrame(err.code, err.message)];
  socket.on('error', () => {}); // the peer may already be gone; nothing more to tell it
  socket.end(Buffer.concat(parts));
  const t = setTimeout(() => socket.destroy(), 2000);
  t.unref();
  socket.once('close', () => clearTimeout(t));
  socket.resume(); // discard whatever the peer still sends, so that end() can complete
}

/** Server side: wait for the client's preamble + HELLO, answer with HELLO_ACK or refuse. */
export async function serverHandshake(socket: Duplex, label: string, opts: HandshakeOptions = {}): Promise<HandshakeResult> {
  const me = localHello(opts);
  const { version, first, decoder } = await readPeer(socket, label, opts, (e) => refuse(socket, e, true));
  let peer: HelloInfo;
  try {
    if (first.code !== CODES.HELLO.code) throw new FerryError('bad-hello', `${label} sent ${first.name} where HELLO was expected`);
    peer = parseHello('HELLO', first.header, version);
    const theyLack = missing(me.requires, peer.capabilities);
    if (theyLack.length) throw new FerryError('missing-capability', `${label} (${peer.node}) lacks required capabilities: ${theyLack.join(', ')}`);
    const weLack = missing(peer.requires, me.capabilities);
    if (weLack.length) throw new FerryError('missing-capability', `${peer.node} requires capabilities this node (${me.node}) lacks: ${weLack.join(', ')}`);
  } catch (e) {
    const err = e instanceof FerryError ? e : new FerryError('bad-hello', String(e));
    refuse(socket, err, true);
    throw err;
  }
  socket.write(Buffer.concat([encodePreamble(version), encodeFrame(resolveCode('HELLO_ACK'), { ...me, version }, undefined)]));
  return { peer, decoder };
}

/** Client side: send preamble + HELLO, wait for HELLO_ACK. A refusal becomes a FerryError with the server's code. */
export async function clientHandshake(socket: Duplex, label: string, opts: HandshakeOptions = {}, input?: SocketInput): Promise<HandshakeResult> {
  const me = localHello(opts);
  socket.write(Buffer.concat([encodePreamble(), encodeFrame(resolveCode('HELLO'), { ...me }, undefined)]));
  const { version, first, decoder } = await readPeer(socket, label, opts, (e) => {
    if (e.code === 'bad-magic' || e.code === 'unsupported-version' || e.code === 'bad-frame') refuse(socket, e, false);
    else if (e.code === 'tls-mismatch') socket.destroy();
    else socket.destroy();
  }, input);
  try {
    if (first.code === CODES.ERROR.code) {
      const code = typeof first.header.code === 'string' ? first.header.code : 'refused';
      const message = typeof first.header.message === 'string' ? first.header.message : 'no reason given';
      throw new FerryError(code, `${label} refused the connection: ${message}`);
    }
    if (first.code !== CODES.HELLO_ACK.code) throw new FerryError('bad-hello', `${label} sent ${first.name} where HELLO_ACK was expected`);
    if (version !== PROTOCOL_VERSION) throw new FerryError('unsupported-version', `${label} answered with protocol version ${version}, not ${PROTOCOL_VERSION}`);
    const peer = parseHello('HELLO_ACK', first.header, version);
    const theyLack = missing(me.requires, peer.capabilities);
    if (theyLack.length) throw new FerryError('missing-capability', `${label} (${peer.node}) lacks required capabilities: ${theyLack.join(', ')}`);
    return { peer, decoder };
  } catch (e) {
    const err = e instanceof FerryError ? e : new FerryError('bad-hello', String(e));
    if (first.code === CODES.ERROR.code) socket.destroy(); else refuse(socket, err, false);
    throw err;
  }
}

