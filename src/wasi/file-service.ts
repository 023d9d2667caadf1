// The home node's side of remote files: executes FileOpRequests against its own disk.
//
// Handles are opaque numbers per client (one client = one incarnation of a process on
// some node), so a peer can neither guess nor use another client's OS fds, and
// closeAll(client) releases what a process left open when it ends or moves on.
// Paths are host paths on this node, confined to the roots given (the process's
// preopened directories): the WASI host already refuses escapes, but the peer sending
// requests is not trusted to be that host, so every path is checked here again,
// symlinks included (realpath of the parent; followed links resolved hop by hop).

import * as fs from 'node:fs';
import * as path from 'node:path';
import { nodeFs, type OpenFlags } from './hostfs.ts';
import { MAX_IO_BYTES, errorReply, type FileOpReply, type FileOpRequest } from './file-ops.ts';

export interface FileServiceOptions {
  /** Host directories the clients may reach (everything below them). */
  roots: string[];
  /** Open handles one client may hold (default 1024): a peer cannot exhaust our fds. */
  maxHandles?: number;
}

const MAX_SYMLINK_HOPS = 40;

class Refused extends Error {
  readonly code = 'EACCES';
}

export class FileService {
  private readonly roots: string[];
  private readonly realRoots: string[];
  private readonly maxHandles: number;
  /** client -> (handle -> OS fd). */
  private readonly clients = new Map<string, Map<number, number>>();
  private nextHandle = 1;

  constructor(opts: FileServiceOptions) {
    this.roots = opts.roots.map((r) => path.resolve(r));
    this.realRoots = this.roots.map((r) => { try { return fs.realpathSync(r); } catch { return r; } });
    this.maxHandles = opts.maxHandles ?? 1024;
  }

  /** Runs one request for a client. Never throws: errors become replies. */
  execute(client: string, req: FileOpRequest): FileOpReply {
    try {
      return this.run(client, req);
    } catch (e) {
      return errorReply(e);
    }
  }

  /** Closes every handle a client holds; returns how many. */
  closeAll(client: string): number {
    const t = this.clients.get(client);
    if (!t) return 0;
    for (const fd of t.values()) { try { fs.closeSync(fd); } catch { /* already gone */ } }
    this.clients.delete(client);
    return t.size;
  }

  /** Open handles of one client, or of all. */
  openCount(client?: string): number {
    if (client !== undefined) return this.clients.get(client)?.size ?? 0;
    let n = 0;
    for (const t of this.clients.values()) n += t.size;
    return n;
  }

  private run(client: string, req: FileOpRequest): FileOpReply {
    switch (req.op) {
      case 'open': return { ok: true, n: this.open(client, req.path, req.flags) };
      case 'close': {
        const t = this.clients.get(client);
        const fd = this.fd(client, req.h);
        t!.delete(req.h);
        if (t!.size === 0) this.clients.delete(client);
        nodeFs.close(fd);
        return { ok: true };
      }
      case 'read': {
        if (req.len > MAX_IO_BYTES) throw Object.assign(new Error(`read of ${req.len} bytes exceeds ${MAX_IO_BYTES}`), { code: 'EINVAL' });
        const buf = Buffer.allocUnsafeSlow(req.len); // not pooled: no stray bytes of this node cross with a view
        const n = nodeFs.read(this.fd(client, req.h), buf, req.pos);
        return { ok: true, data: buf.subarray(0, n) };
      }
      case 'write': return { ok: true, n: nodeFs.write(this.fd(client, req.h), req.data, req.pos) };
      case 'fstat': return { ok: true, stat: nodeFs.fstat(this.fd(client, req.h)) };
      case 'fsync': nodeFs.fsync(this.fd(client, req.h)); return { ok: true };
      case 'fdatasync': nodeFs.fdatasync(this.fd(client, req.h)); return { ok: true };
      case 'ftruncate': nodeFs.ftruncate(this.fd(client, req.h), req.len); return { ok: true };
      case 'futimes': nodeFs.futimes(this.fd(client, req.h), req.atime, req.mtime); return { ok: true };
      case 'stat': return { ok: true, stat: nodeFs.stat(this.confine(req.path, true)) };
      case 'lstat': return { ok: true, stat: nodeFs.lstat(this.confine(req.path, false)) };
      case 'readlink': return { ok: true, data: nodeFs.readlink(this.confine(req.path, false)) };
      case 'readdir': return { ok: true, entries: nodeFs.readdir(this.confine(req.path, true)) };
      case 'mkdir': nodeFs.mkdir(this.confine(req.path, false)); return { ok: true };
      case 'rmdir': nodeFs.rmdir(this.confine(req.path, false)); return { ok: true };
      case 'unlink': nodeFs.unlink(this.confine(req.path, false)); return { ok: true };
      case 'utimes': nodeFs.utimes(this.confine(req.path, req.follow), req.atime, req.mtime, req.follow); return { ok: true };
      // link(2) does not follow a final symlink: both ends are checked as named.
      case 'rename': nodeFs.rename(this.confine(req.from, false), this.confine(req.to, false)); return { ok: true };
      case 'link': nodeFs.link(this.confine(req.from, false), this.confine(req.to, false)); return { ok: true };
      // The target is only text; following the link later is checked then.
      case 'symlink': nodeFs.symlink(req.target, this.confine(req.path, false)); return { ok: true };
    }
  }

  private open(client: string, p: string, flags: OpenFlags): number {
    let t = this.clients.get(client);
    if ((t?.size ?? 0) >= this.maxHandles) throw Object.assign(new Error(`client ${client} holds ${this.maxHandles} handles`), { code: 'EMFILE' });
    const fd = nodeFs.open(this.confine(p, !flags.nofollow), flags);
    if (!t) this.clients.set(client, (t = new Map()));
    const h = this.nextHandle++;
    t.set(h, fd);
    return h;
  }

  private fd(client: string, h: number): number {
    const fd = this.clients.get(client)?.get(h);
    if (fd === undefined) throw Object.assign(new Error(`no handle ${h} for client ${client}`), { code: 'EBADF' });
    return fd;
  }

  private under(p: string, roots: string[]): boolean {
    return roots.some((r) => p === r || p.startsWith(r.endsWith(path.sep) ? r : r + path.sep));
  }

  /**
   * Refuses (EACCES) a path that is, or would lead through a symlink, outside the roots;
   * returns the path to use (the caller's own, so a trailing '/' keeps its meaning). A
   * missing parent is let through: the operation itself then fails as it should.
   */
  private confine(p: string, follow: boolean): string {
    if (!path.isAbsolute(p)) throw new Refused(`relative path ${p}`);
    let cur = path.resolve(p);
    if (!this.under(cur, this.roots) && !this.under(cur, this.realRoots)) throw new Refused(`${p} is outside the served directories`);
    for (let hop = 0; ; hop++) {
      if (this.roots.includes(cur) || this.realRoots.includes(cur)) return p; // a root itself is trusted as given
      let real: string;
      try { real = path.join(fs.realpathSync(path.dirname(cur)), path.basename(cur)); } catch { return p; }
      if (!this.under(real, this.realRoots)) throw new Refused(`${p} leads outside the served directories`);
      if (!follow) return p;
      let link: string;
      try {
        if (!fs.lstatSync(real).isSymbolicLink()) return p;
        link = fs.readlinkSync(real);
      } catch { return p; } // does not exist (yet): created, if at all, at `real`, inside
      if (hop >= MAX_SYMLINK_HOPS) throw Object.assign(new Error(`too many symlinks in ${p}`), { code: 'ELOOP' });
      cur = path.resolve(path.dirname(real), link);
    }
  }
}
