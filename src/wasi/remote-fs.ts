// A HostFs whose every call is executed elsewhere (the home node's FileService).
// The WASI host is synchronous, so the worker thread blocks on each call: it posts the
// request to its owner (main thread) and sleeps in Atomics.wait until the owner bumps a
// word of the control block, then takes the reply with receiveMessageOnPort from a
// MessagePort of its own. Replies of any size cross that port (no buffer to size); a
// read or write larger than MAX_IO_BYTES is still split, to keep each frame bounded.

import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import type { HostDirent, HostFs, HostStat, OpenFlags } from './hostfs.ts';
import { MAX_IO_BYTES, type FileOpReply, type FileOpRequest } from './file-ops.ts';

export * from './file-ops.ts';

/** Performs one request synchronously. Never throws: failures are replies. */
export type SyncFileCall = (req: FileOpRequest) => FileOpReply;

/** A dead peer must end as an error, not a hang; a live one answers in milliseconds. */
export const DEFAULT_FILE_TIMEOUT_MS = 60_000;

/** What the owner posts back on the file port. */
export interface FileReplyMessage { id: number; reply: FileOpReply }

export interface AtomicsCallOptions {
  /** The owner bumps signal[index] (and notifies) after each reply it posts. */
  signal: Int32Array;
  index: number;
  port: MessagePort;
  /** Hands the request to the owner (a parentPort message). */
  send: (id: number, req: FileOpRequest) => void;
  timeoutMs?: number;
}

/** The worker's side of the channel. A reply that comes after its call timed out is
 *  dropped by id when the next call drains the port. */
export function atomicsFileCall(o: AtomicsCallOptions): SyncFileCall {
  const timeoutMs = o.timeoutMs ?? DEFAULT_FILE_TIMEOUT_MS;
  let nextId = 0;
  return (req) => {
    const id = ++nextId;
    let seen = Atomics.load(o.signal, o.index); // before sending: a reply can never be missed
    o.send(id, req);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      for (let m = receiveMessageOnPort(o.port); m; m = receiveMessageOnPort(o.port)) {
        const r = m.message as FileReplyMessage;
        if (r.id === id) return r.reply;
      }
      const left = deadline - performance.now();
      if (left <= 0) return { ok: false, code: 'EIO', message: `file server did not answer ${req.op} within ${timeoutMs} ms` };
      // Short slices: a terminated worker is not left sleeping for a minute.
      Atomics.wait(o.signal, o.index, seen, Math.min(left, 1000));
      seen = Atomics.load(o.signal, o.index);
    }
  };
}

/** A failed remote call, thrown with the errno name the WASI host maps (as node:fs's). */
export class RemoteFsError extends Error {
  constructor(readonly code: string, message: string) { super(message); }
}

export class RemoteFs implements HostFs {
  constructor(private readonly call: SyncFileCall) {}

  private do(req: FileOpRequest): FileOpReply & { ok: true } {
    const r = this.call(req);
    if (!r.ok) throw new RemoteFsError(r.code, r.message);
    return r;
  }
  private statOf(r: FileOpReply & { ok: true }): HostStat {
    if (!r.stat) throw new RemoteFsError('EIO', 'file server sent no stat');
    return r.stat;
  }

  open(path: string, flags: OpenFlags): number { return this.do({ op: 'open', path, flags }).n!; }
  close(h: number): void { this.do({ op: 'close', h }); }

  read(h: number, buf: Uint8Array, position: number): number {
    let total = 0;
    while (total < buf.length) {
      const len = Math.min(MAX_IO_BYTES, buf.length - total);
      const data = this.do({ op: 'read', h, len, pos: position + total }).data ?? new Uint8Array(0);
      const n = Math.min(len, data.length);
      buf.set(data.subarray(0, n), total);
      total += n;
      if (n < len) break; // end of file
    }
    return total;
  }

  write(h: number, buf: Uint8Array, position: number): number {
    let total = 0;
    while (total < buf.length) {
      const len = Math.min(MAX_IO_BYTES, buf.length - total);
      // slice(): buf views the shared guest memory, which must not cross by reference.
      const n = this.do({ op: 'write', h, pos: position + total, data: buf.slice(total, total + len) }).n ?? 0;
      total += n;
      if (n < len) break;
    }
    return total;
  }

  fstat(h: number): HostStat { return this.statOf(this.do({ op: 'fstat', h })); }
  stat(path: string): HostStat { return this.statOf(this.do({ op: 'stat', path })); }
  lstat(path: string): HostStat { return this.statOf(this.do({ op: 'lstat', path })); }
  ftruncate(h: number, len: number): void { this.do({ op: 'ftruncate', h, len }); }
  fsync(h: number): void { this.do({ op: 'fsync', h }); }
  fdatasync(h: number): void { this.do({ op: 'fdatasync', h }); }
  futimes(h: number, atime: number, mtime: number): void { this.do({ op: 'futimes', h, atime, mtime }); }
  utimes(path: string, atime: number, mtime: number, follow: boolean): void { this.do({ op: 'utimes', path, atime, mtime, follow }); }
  mkdir(path: string): void { this.do({ op: 'mkdir', path }); }
  rmdir(path: string): void { this.do({ op: 'rmdir', path }); }
  unlink(path: string): void { this.do({ op: 'unlink', path }); }
  rename(from: string, to: string): void { this.do({ op: 'rename', from, to }); }
  link(from: string, to: string): void { this.do({ op: 'link', from, to }); }
  symlink(target: string, path: string): void { this.do({ op: 'symlink', target, path }); }
  readlink(path: string): Uint8Array { return this.do({ op: 'readlink', path }).data ?? new Uint8Array(0); }
  readdir(path: string): HostDirent[] { return this.do({ op: 'readdir', path }).entries ?? []; }
}
