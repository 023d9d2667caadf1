// File operations as data: one request per HostFs call, one reply, and their wire form.
// A process whose files live on its home node sends these instead of touching a disk
// (Sprite's home-node file policy); the home node's FileService executes them.
//
// Wire form (FILE_OP / FILE_REPLY frames): a JSON header and an optional binary body.
// The request's `data` (write) and the reply's `data` (read, readlink) travel as the
// body, never inside JSON; bigints (stats) travel as decimal strings.

import type { HostDirent, HostStat, OpenFlags } from './hostfs.ts';

/** Largest read or write one request may carry. RemoteFs splits bigger ones, the
 *  service refuses bigger ones: a frame stays well under the transport's 16 MiB limit. */
export const MAX_IO_BYTES = 1 << 20;

export type FileOpRequest =
  | { op: 'open'; path: string; flags: OpenFlags }
  | { op: 'close' | 'fstat' | 'fsync' | 'fdatasync'; h: number }
  | { op: 'read'; h: number; len: number; pos: number }
  | { op: 'write'; h: number; pos: number; data: Uint8Array }
  | { op: 'ftruncate'; h: number; len: number }
  | { op: 'futimes'; h: number; atime: number; mtime: number }
  | { op: 'stat' | 'lstat' | 'mkdir' | 'rmdir' | 'unlink' | 'readlink' | 'readdir'; path: string }
  | { op: 'utimes'; path: string; atime: number; mtime: number; follow: boolean }
  | { op: 'rename' | 'link'; from: string; to: string }
  | { op: 'symlink'; target: string; path: string };

export type FileOpName = FileOpRequest['op'];

/** `n`: open's handle, write's count. `data`: read's bytes, readlink's target.
 *  `code`: a Node-style errno name ('ENOENT'), so the WASI host maps it as for node:fs. */
export type FileOpReply =
  | { ok: true; n?: number; stat?: HostStat; entries?: HostDirent[]; data?: Uint8Array }
  | { ok: false; code: string; message: string };

// Field kinds per op, checked on decode: the service must not trust a peer's JSON.
type Kind = 'str' | 'int' | 'num' | 'bool' | 'flags';
const FIELDS: Record<FileOpName, Record<string, Kind>> = {
  open: { path: 'str', flags: 'flags' },
  close: { h: 'int' }, fstat: { h: 'int' }, fsync: { h: 'int' }, fdatasync: { h: 'int' },
  read: { h: 'int', len: 'int', pos: 'int' },
  write: { h: 'int', pos: 'int' },
  ftruncate: { h: 'int', len: 'int' },
  futimes: { h: 'int', atime: 'num', mtime: 'num' },
  stat: { path: 'str' }, lstat: { path: 'str' }, mkdir: { path: 'str' }, rmdir: { path: 'str' },
  unlink: { path: 'str' }, readlink: { path: 'str' }, readdir: { path: 'str' },
  utimes: { path: 'str', atime: 'num', mtime: 'num', follow: 'bool' },
  rename: { from: 'str', to: 'str' }, link: { from: 'str', to: 'str' },
  symlink: { target: 'str', path: 'str' },
};
const FLAG_NAMES = ['read', 'write', 'create', 'excl', 'trunc', 'directory', 'nofollow'] as const;

function fits(kind: Kind, v: unknown): boolean {
  switch (kind) {
    case 'str': return typeof v === 'string';
    case 'int': return Number.isSafeInteger(v) && (v as number) >= 0;
    case 'num': return typeof v === 'number' && Number.isFinite(v);
    case 'bool': return typeof v === 'boolean';
    case 'flags': return typeof v === 'object' && v !== null && !Array.isArray(v)
      && Object.entries(v).every(([k, b]) => (FLAG_NAMES as readonly string[]).includes(k) && (b === undefined || typeof b === 'boolean'));
  }
}

/** A request's JSON header (plus the caller's own fields, e.g. pid) and body. */
export function encodeFileOp(req: FileOpRequest, extra: Record<string, unknown> = {}): { header: Record<string, unknown>; body?: Uint8Array } {
  const { op } = req;
  const header: Record<string, unknown> = { ...extra, op };
  for (const k of Object.keys(FIELDS[op])) header[k] = (req as unknown as Record<string, unknown>)[k];
  return { header, body: req.op === 'write' ? req.data : undefined };
}

/** Rebuilds a request from a header and body; throws a TypeError on a malformed one. */
export function decodeFileOp(header: Record<string, unknown>, body?: Uint8Array): FileOpRequest {
  const op = header.op;
  if (typeof op !== 'string' || !Object.hasOwn(FIELDS, op)) throw new TypeError(`unknown file op ${String(op)}`);
  const req: Record<string, unknown> = { op };
  for (const [k, kind] of Object.entries(FIELDS[op as FileOpName])) {
    if (!fits(kind, header[k])) throw new TypeError(`file op ${op}: bad ${k}`);
    req[k] = kind === 'flags' ? { ...(header[k] as object) } : header[k];
  }
  if (op === 'write') req.data = body ?? new Uint8Array(0);
  return req as unknown as FileOpRequest;
}

const STAT_BIG = ['dev', 'ino', 'nlink', 'size', 'atimNs', 'mtimNs', 'ctimNs'] as const;

export function encodeFileReply(reply: FileOpReply, extra: Record<string, unknown> = {}): { header: Record<string, unknown>; body?: Uint8Array } {
  if (!reply.ok) return { header: { ...extra, ok: false, code: reply.code, message: reply.message } };
  const header: Record<string, unknown> = { ...extra, ok: true };
  if (reply.n !== undefined) header.n = reply.n;
  if (reply.entries) header.entries = reply.entries;
  if (reply.stat) {
    const s: Record<string, unknown> = { filetype: reply.stat.filetype };
    for (const k of STAT_BIG) s[k] = reply.stat[k].toString();
    header.stat = s;
  }
  if (reply.data) header.data = true; // an empty body is still data (readlink of ""? a read at EOF)
  return { header, body: reply.data };
}

export function decodeFileReply(header: Record<string, unknown>, body?: Uint8Array): FileOpReply {
  if (header.ok !== true) {
    return { ok: false, code: typeof header.code === 'string' ? header.code : 'EIO', message: typeof header.message === 'string' ? header.message : 'file operation failed' };
  }
  const reply: FileOpReply = { ok: true };
  if (typeof header.n === 'number') reply.n = header.n;
  if (Array.isArray(header.entries)) reply.entries = header.entries as HostDirent[];
  if (header.stat && typeof header.stat === 'object') {
    const s = header.stat as Record<string, unknown>;
    const stat = { filetype: Number(s.filetype) } as HostStat;
    for (const k of STAT_BIG) stat[k] = BigInt(String(s[k]));
    reply.stat = stat;
  }
  if (header.data) reply.data = body ?? new Uint8Array(0);
  return reply;
}

/** The reply for a thrown error: its errno name when it has one, else EIO. */
export function errorReply(err: unknown): FileOpReply & { ok: false } {
  const code = (err as { code?: unknown } | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  return { ok: false, code: typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) ? code : 'EIO', message };
}
