// Ferry's WASI preview 1 host. Its whole state is the plain-data WasiState (types.ts):
// a host built from snapshot() in another thread or on another node carries on with the
// same descriptors, offsets, args, env, clock and pending sleep. Host OS file handles
// are only a cache, reopened lazily from FdEntry.hostPath.

import * as path from 'node:path';
import { randomFillSync } from 'node:crypto';
import {
  E, NODE_ERRNO, FILETYPE, FDFLAGS, OFLAGS, LOOKUP_SYMLINK_FOLLOW, FSTFLAGS, WHENCE, CLOCK,
  EVENTTYPE, SUBCLOCK_ABSTIME, EVENT_FD_READWRITE_HANGUP, PREOPENTYPE_DIR, RIGHTS, RIGHTS_ALL,
  RIGHTS_STDIO,
} from './constants.ts';
import { nodeFs, type HostFs, type HostStat, type HostDirent } from './hostfs.ts';
import {
  SUSPEND, WasiExit, type FdEntry, type GuestMemory, type Suspend, type WasiIo, type WasiState,
} from './types.ts';

export { nodeFs, type HostFs, type HostStat, type HostDirent, type OpenFlags } from './hostfs.ts';

export interface WasiOptions {
  args: string[];
  env: string[];
  preopens: { host: string; guest: string }[];
}

/** Fresh state: fds 0-2 are stdio, preopened directories from fd 3 on. */
export function initialWasiState(opts: WasiOptions): WasiState {
  const stdio = (kind: 'stdin' | 'stdout' | 'stderr'): FdEntry => ({
    kind, offset: 0, fdflags: 0, read: kind === 'stdin', write: kind !== 'stdin',
    rightsBase: RIGHTS_STDIO.toString(), rightsInheriting: '0',
  });
  const fds: Record<number, FdEntry> = { 0: stdio('stdin'), 1: stdio('stdout'), 2: stdio('stderr') };
  const preopens = opts.preopens.map((p) => ({ host: path.resolve(p.host), guest: p.guest }));
  preopens.forEach((p, i) => {
    fds[3 + i] = {
      kind: 'directory', hostPath: p.host, guestPath: p.guest, preopen: p.guest, offset: 0,
      fdflags: 0, read: true, write: false,
      rightsBase: RIGHTS_ALL.toString(), rightsInheriting: RIGHTS_ALL.toString(),
    };
  });
  return {
    version: 1,
    args: [...opts.args],
    env: [...opts.env],
    preopens,
    fds,
    monotonicNs: hostMonoNs().toString(),
    pendingDeadlineNs: null,
    pendingPollStartNs: null,
    stdinBuffered: '',
    stdinEof: false,
    exitCode: null,
  };
}

/** Host monotonic clock in ns: process.hrtime (CLOCK_MONOTONIC, the clock performance.now()
 *  also reads), so deadlines convert to io.wait's performance.now() scale by difference. */
function hostMonoNs(): bigint { return process.hrtime.bigint(); }
function realtimeNs(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
}

/** A WASI errno carried as an exception inside the host. Not an Error: capturing a
 *  stack trace on every failed call (EBADF probes are common) costs microseconds. */
class Errno {
  constructor(readonly errno: number) {}
}
const fail = (errno: number): never => { throw new Errno(errno); };

const enc = new TextEncoder();
const MAX_SYMLINKS = 40;

interface Resolved { host: string; rel: string[] }

type ImportFn = (...a: any[]) => number | Suspend;

export class WasiHost {
  /** The live state (shared with whoever passed it in; snapshot() returns a copy). */
  state!: WasiState;
  private monoOffset = 0n;
  /** guest fd -> backend handle (cache, not state). */
  private readonly handles = new Map<number, number>();
  /** guest fd -> directory listing taken at cookie 0 (cache, keeps cookies stable). */
  private readonly listings = new Map<number, HostDirent[]>();

  constructor(state: WasiState, private readonly mem: GuestMemory, private readonly io: WasiIo,
              private fs: HostFs = nodeFs) {
    this.load(state, fs);
  }

  /** Serve this state from now on (a worker's host exists before the process it will run:
   *  its imports are bound at instantiation). Cached handles of the previous one are closed. */
  load(state: WasiState, fs: HostFs = nodeFs): void {
    this.dispose();
    this.fs = fs;
    this.state = state;
    if (state.pendingPollStartNs === undefined) state.pendingPollStartNs = null;
    this.monoOffset = BigInt(state.monotonicNs) - hostMonoNs();
  }

  /** The guest's monotonic clock (ns). */
  monotonicNs(): bigint { return hostMonoNs() + this.monoOffset; }

  /** Deep copy of the state, with monotonicNs set to the guest clock now. */
  snapshot(): WasiState {
    const s: WasiState = JSON.parse(JSON.stringify(this.state));
    s.monotonicNs = this.monotonicNs().toString();
    return s;
  }

  /** Releases cached host handles (the state stays valid; another host may carry on). */
  dispose(): void {
    for (const h of this.handles.values()) { try { this.fs.close(h); } catch { /* ignore */ } }
    this.handles.clear();
    this.listings.clear();
  }

  // ---------------------------------------------------------------- memory helpers

  private check(addr: number, len: number): void {
    if (addr + len > this.mem.bytes().length) fail(E.FAULT);
  }
  private present(addr: number, len: number): void {
    this.check(addr, len);
    if (len > 0) this.mem.ensurePresent(addr, len);
  }
  /** Before a host write: the pages must be present too (a partial-page write must not be
   *  overwritten later by a page fetched from elsewhere), then they are marked dirty. */
  private dirty(addr: number, len: number): void {
    this.check(addr, len);
    if (len > 0) { this.mem.ensurePresent(addr, len); this.mem.markDirty(addr, len); }
  }
  private getU32(addr: number): number { this.present(addr, 4); return this.mem.view().getUint32(addr, true); }
  private setU32(addr: number, v: number): void { this.dirty(addr, 4); this.mem.view().setUint32(addr, v, true); }
  private setU64(addr: number, v: bigint): void { this.dirty(addr, 8); this.mem.view().setBigUint64(addr, BigInt.asUintN(64, v), true); }
  private readStr(addr: number, len: number): string {
    this.present(addr, len);
    return Buffer.from(this.mem.bytes().subarray(addr, addr + len)).toString('utf8');
  }
  /** Copies data into guest memory at addr. */
  private put(addr: number, data: Uint8Array): void {
    this.dirty(addr, data.length);
    this.mem.bytes().set(data, addr);
  }
  /** The iovecs at `iovs`, empty ones left out: wasi-libc's stdio passes its own (often
   *  empty) buffer beside the caller's, and one buffer is one plain read or write call
   *  instead of a vectored one (cheaper in Node's fs). */
  private iovecs(iovs: number, n: number): [number, number][] {
    this.present(iovs, n * 8);
    const v = this.mem.view();
    const out: [number, number][] = [];
    for (let i = 0; i < n; i++) {
      const len = v.getUint32(iovs + i * 8 + 4, true);
      if (len > 0) out.push([v.getUint32(iovs + i * 8, true), len]);
    }
    return out;
  }

  // ---------------------------------------------------------------- fd helpers

  private entry(fd: number): FdEntry {
    const e = this.state.fds[fd];
    if (!e) fail(E.BADF);
    return e!;
  }
  private file(fd: number): FdEntry {
    const e = this.entry(fd);
    if (e.kind === 'directory') fail(E.ISDIR);
    if (e.kind !== 'file') fail(E.SPIPE);
    return e;
  }
  private dir(fd: number): FdEntry {
    const e = this.entry(fd);
    if (e.kind !== 'directory') fail(E.NOTDIR);
    return e;
  }
  /** The backend handle of a file descriptor, reopened from hostPath if needed (never creating or truncating). */
  private handle(fd: number, e: FdEntry): number {
    let h = this.handles.get(fd);
    if (h === undefined) {
      h = this.fs.open(e.hostPath!, { read: e.read, write: e.write });
      this.handles.set(fd, h);
    }
    return h;
  }
  private dropHandle(fd: number): void {
    const h = this.handles.get(fd);
    this.handles.delete(fd);
    this.listings.delete(fd);
    if (h !== undefined) { try { this.fs.close(h); } catch { /* ignore */ } }
  }
  private allocFd(): number {
    let fd = 0;
    while (this.state.fds[fd]) fd++;
    return fd;
  }

  // ---------------------------------------------------------------- path resolution

  /**
   * Resolves a guest path relative to a directory descriptor without leaving it: absolute
   * paths, `..` above the directory and symlinks pointing out are refused (ENOTCAPABLE).
   * Symlinks in intermediate components are followed; the final one only if followFinal.
   */
  private resolve(dirfd: number, p: string, followFinal: boolean): Resolved {
    const d = this.dir(dirfd);
    if (p.length === 0) fail(E.NOENT);
    if (p.includes('\0')) fail(E.INVAL);
    if (p.startsWith('/')) fail(E.NOTCAPABLE);
    const trailingSlash = p.endsWith('/');
    const todo = p.split('/').filter((c) => c !== '' && c !== '.');
    if (trailingSlash) followFinal = true;
    const rel: string[] = [];
    let links = 0;
    while (todo.length > 0) {
      const c = todo.shift()!;
      if (c === '..') {
        if (rel.length === 0) fail(E.NOTCAPABLE);
        rel.pop();
        continue;
      }
      rel.push(c);
      const isFinal = todo.length === 0;
      if (isFinal && !followFinal) break;
      const host = path.join(d.hostPath!, ...rel);
      let st: HostStat | null = null;
      try { st = this.fs.lstat(host); } catch { st = null; }
      if (st && st.filetype === FILETYPE.SYMBOLIC_LINK) {
        if (++links > MAX_SYMLINKS) fail(E.LOOP);
        const target = Buffer.from(this.fs.readlink(host)).toString('utf8');
        if (target.startsWith('/')) fail(E.NOTCAPABLE);
        rel.pop();
        const parts = target.split('/').filter((x) => x !== '' && x !== '.');
        todo.unshift(...parts);
        // A link ending in '/' or to '.' still names a directory: nothing more to do.
      }
    }
    let host = rel.length === 0 ? d.hostPath! : path.join(d.hostPath!, ...rel);
    if (trailingSlash && rel.length > 0) host += '/';
    return { host, rel };
  }

  private pathArg(dirfd: number, ptr: number, len: number, follow: boolean): Resolved {
    return this.resolve(dirfd, this.readStr(ptr, len), follow);
  }

  // ---------------------------------------------------------------- structs

  private writeFilestat(buf: number, s: HostStat): void {
    this.dirty(buf, 64);
    const v = this.mem.view();
    v.setBigUint64(buf, s.dev, true);
    v.setBigUint64(buf + 8, s.ino, true);
    v.setUint8(buf + 16, s.filetype);
    for (let i = 17; i < 24; i++) v.setUint8(buf + i, 0);
    v.setBigUint64(buf + 24, s.nlink, true);
    v.setBigUint64(buf + 32, s.size, true);
    v.setBigUint64(buf + 40, BigInt.asUintN(64, s.atimNs), true);
    v.setBigUint64(buf + 48, BigInt.asUintN(64, s.mtimNs), true);
    v.setBigUint64(buf + 56, BigInt.asUintN(64, s.ctimNs), true);
  }

  private fdStat(fd: number, e: FdEntry): HostStat {
    if (e.kind === 'file') return this.fs.fstat(this.handle(fd, e));
    if (e.kind === 'directory') return this.fs.stat(e.hostPath!);
    return { dev: 0n, ino: 0n, filetype: FILETYPE.CHARACTER_DEVICE, nlink: 1n, size: 0n, atimNs: 0n, mtimNs: 0n, ctimNs: 0n };
  }

  /** Computes [atime, mtime] in seconds for a set_times call, from the current times if kept. */
  private times(cur: () => HostStat, atim: bigint, mtim: bigint, flags: number): [number, number] {
    if ((flags & FSTFLAGS.ATIM && flags & FSTFLAGS.ATIM_NOW) || (flags & FSTFLAGS.MTIM && flags & FSTFLAGS.MTIM_NOW)) fail(E.INVAL);
    if (flags & ~0xf) fail(E.INVAL);
    const now = Date.now() / 1000;
    let st: HostStat | null = null;
    const get = () => (st ??= cur());
    const a = flags & FSTFLAGS.ATIM_NOW ? now : flags & FSTFLAGS.ATIM ? Number(atim) / 1e9 : Number(get().atimNs) / 1e9;
    const m = flags & FSTFLAGS.MTIM_NOW ? now : flags & FSTFLAGS.MTIM ? Number(mtim) / 1e9 : Number(get().mtimNs) / 1e9;
    return [a, m];
  }

  // ---------------------------------------------------------------- stdin

  private stdinReady(): { ready: boolean; nbytes: bigint; eof: boolean } {
    if (!this.io.stdinAvailable) return { ready: true, nbytes: 1n, eof: false };
    const n = this.io.stdinAvailable();
    if (n < 0) return { ready: true, nbytes: 0n, eof: true };
    return { ready: n > 0, nbytes: BigInt(n), eof: false };
  }

  // ---------------------------------------------------------------- imports

  /** The wasi_snapshot_preview1 import object. */
  imports(): Record<string, ImportFn> {
    const raw = this.functions();
    const out: Record<string, ImportFn> = {};
    for (const [name, fn] of Object.entries(raw)) out[name] = this.guard(fn);
    return out;
  }

  /** Wraps an implementation so a thrown Errno (or Node error) becomes its errno. The
   *  wrapper has the implementation's arity: V8 calls a JS import from wasm faster when
   *  the argument count matches (no rest parameters, no spread). */
  private guard(fn: (...a: any[]) => number | Suspend): ImportFn {
    const onError = (err: unknown) => this.errnoOf(err);
    switch (fn.length) {
      case 0: return () => { try { return fn(); } catch (e) { return onError(e); } };
      case 1: return (a: any) => { try { return fn(a); } catch (e) { return onError(e); } };
      case 2: return (a: any, b: any) => { try { return fn(a, b); } catch (e) { return onError(e); } };
      case 3: return (a: any, b: any, c: any) => { try { return fn(a, b, c); } catch (e) { return onError(e); } };
      case 4: return (a: any, b: any, c: any, d: any) => { try { return fn(a, b, c, d); } catch (e) { return onError(e); } };
      case 5: return (a: any, b: any, c: any, d: any, e1: any) => { try { return fn(a, b, c, d, e1); } catch (e) { return onError(e); } };
      case 6: return (a: any, b: any, c: any, d: any, e1: any, f: any) => { try { return fn(a, b, c, d, e1, f); } catch (e) { return onError(e); } };
      default: return (...args: any[]) => { try { return fn(...args); } catch (e) { return onError(e); } };
    }
  }

  private errnoOf(err: unknown): number {
    if (err instanceof Errno) return err.errno;
    if (err instanceof WasiExit) throw err;
    const code = (err as { code?: unknown })?.code;
    if (typeof code === 'string' && code in NODE_ERRNO) return NODE_ERRNO[code]!;
    if (typeof code === 'string' && /^E[A-Z0-9]+$/.test(code)) return E.IO;  // an OS error we do not map
    if (err instanceof RangeError) return E.FAULT;
    throw err;
  }

  private functions(): Record<string, (...a: any[]) => number | Suspend> {
    const u = (x: number) => x >>> 0;
    return {
      // ---- args / environ
      args_get: (argv: number, buf: number) => this.putStrings(this.state.args, u(argv), u(buf)),
      args_sizes_get: (argc: number, size: number) => this.putSizes(this.state.args, u(argc), u(size)),
      environ_get: (env: number, buf: number) => this.putStrings(this.state.env, u(env), u(buf)),
      environ_sizes_get: (cnt: number, size: number) => this.putSizes(this.state.env, u(cnt), u(size)),

      // ---- clocks / random / process
      clock_res_get: (id: number, out: number) => {
        id = u(id); out = u(out);
        if (id > 3) return E.INVAL;
        this.dirty(out, 8);
        const v = this.mem.view();
        v.setUint32(out, id === CLOCK.REALTIME ? 1000 : 1, true);
        v.setUint32(out + 4, 0, true);
        return E.SUCCESS;
      },
      clock_time_get: (id: number, _precision: bigint, out: number) => {
        const t = this.clockNow(u(id));
        if (t === null) return E.INVAL;
        this.setU64(u(out), t);
        return E.SUCCESS;
      },
      random_get: (buf: number, len: number) => {
        buf = u(buf); len = u(len);
        const tmp = Buffer.allocUnsafe(len);
        randomFillSync(tmp);
        this.put(buf, tmp);
        return E.SUCCESS;
      },
      proc_exit: (code: number) => {
        this.state.exitCode = u(code);
        throw new WasiExit(u(code));
      },
      proc_raise: (_sig: number) => E.NOSYS,
      sched_yield: () => E.SUCCESS,

      // ---- descriptors
      fd_advise: (fd: number, _off: bigint, _len: bigint, advice: number) => {
        const e = this.entry(u(fd));
        if (e.kind === 'directory') return E.BADF;
        if (u(advice) > 5) return E.INVAL;
        return E.SUCCESS;
      },
      fd_allocate: (fd: number, off: bigint, len: bigint) => {
        fd = u(fd);
        const e = this.file(fd);
        const h = this.handle(fd, e);
        const end = BigInt.asUintN(64, off) + BigInt.asUintN(64, len);
        if (this.fs.fstat(h).size < end) this.fs.ftruncate(h, Number(end));
        return E.SUCCESS;
      },
      fd_close: (fd: number) => {
        fd = u(fd);
        this.entry(fd);
        this.dropHandle(fd);
        delete this.state.fds[fd];
        return E.SUCCESS;
      },
      fd_datasync: (fd: number) => {
        fd = u(fd);
        const e = this.entry(fd);
        if (e.kind === 'file') this.fs.fdatasync(this.handle(fd, e));
        return E.SUCCESS;
      },
      fd_sync: (fd: number) => {
        fd = u(fd);
        const e = this.entry(fd);
        if (e.kind === 'file') this.fs.fsync(this.handle(fd, e));
        return E.SUCCESS;
      },
      fd_fdstat_get: (fd: number, buf: number) => {
        fd = u(fd); buf = u(buf);
        const e = this.state.fds[fd];
        if (!e) return E.BADF; // no exception: EBADF probes are common
        const ft = e.kind === 'file' ? this.fdStat(fd, e).filetype
          : e.kind === 'directory' ? FILETYPE.DIRECTORY : FILETYPE.CHARACTER_DEVICE;
        this.dirty(buf, 24);
        const v = this.mem.view();
        v.setUint8(buf, ft);
        v.setUint8(buf + 1, 0);
        v.setUint16(buf + 2, e.fdflags, true);
        v.setUint32(buf + 4, 0, true);
        this.setRights(v, buf + 8, e.rightsBase);
        this.setRights(v, buf + 16, e.rightsInheriting);
        return E.SUCCESS;
      },
      fd_fdstat_set_flags: (fd: number, flags: number) => {
        const e = this.entry(u(fd));
        flags = u(flags) & 0xffff;
        if (flags & ~(FDFLAGS.APPEND | FDFLAGS.DSYNC | FDFLAGS.NONBLOCK | FDFLAGS.RSYNC | FDFLAGS.SYNC)) return E.INVAL;
        e.fdflags = flags;
        return E.SUCCESS;
      },
      fd_fdstat_set_rights: (fd: number, base: bigint, inh: bigint) => {
        const e = this.entry(u(fd));
        base = BigInt.asUintN(64, base); inh = BigInt.asUintN(64, inh);
        const cb = BigInt(e.rightsBase), ci = BigInt(e.rightsInheriting);
        if ((base & ~cb) !== 0n || (inh & ~ci) !== 0n) return E.NOTCAPABLE;
        e.rightsBase = base.toString();
        e.rightsInheriting = inh.toString();
        return E.SUCCESS;
      },
      fd_filestat_get: (fd: number, buf: number) => {
        fd = u(fd);
        const e = this.entry(fd);
        this.writeFilestat(u(buf), this.fdStat(fd, e));
        return E.SUCCESS;
      },
      fd_filestat_set_size: (fd: number, size: bigint) => {
        fd = u(fd);
        const e = this.entry(fd);
        if (e.kind === 'directory') return E.ISDIR;
        if (e.kind !== 'file') return E.INVAL;
        this.fs.ftruncate(this.handle(fd, e), Number(BigInt.asUintN(64, size)));
        return E.SUCCESS;
      },
      fd_filestat_set_times: (fd: number, atim: bigint, mtim: bigint, flags: number) => {
        fd = u(fd);
        const e = this.entry(fd);
        if (e.kind === 'directory') {
          const [a, m] = this.times(() => this.fs.stat(e.hostPath!), atim, mtim, u(flags));
          this.fs.utimes(e.hostPath!, a, m, true);
        } else if (e.kind === 'file') {
          const h = this.handle(fd, e);
          const [a, m] = this.times(() => this.fs.fstat(h), atim, mtim, u(flags));
          this.fs.futimes(h, a, m);
        } else return E.BADF;
        return E.SUCCESS;
      },
      fd_pread: (fd: number, iovs: number, n: number, off: bigint, nread: number) => {
        fd = u(fd);
        const e = this.file(fd);
        if (!e.read) return E.BADF;
        const total = this.readFile(fd, e, this.iovecs(u(iovs), u(n)), Number(BigInt.asUintN(64, off)));
        this.setU32(u(nread), total);
        return E.SUCCESS;
      },
      fd_pwrite: (fd: number, iovs: number, n: number, off: bigint, nwritten: number) => {
        fd = u(fd);
        const e = this.file(fd);
        if (!e.write) return E.BADF;
        const total = this.writeFile(fd, e, this.iovecs(u(iovs), u(n)), Number(BigInt.asUintN(64, off)));
        this.setU32(u(nwritten), total);
        return E.SUCCESS;
      },
      fd_read: (fd: number, iovs: number, n: number, nread: number) => {
        fd = u(fd);
        const e = this.entry(fd);
        const vecs = this.iovecs(u(iovs), u(n));
        if (e.kind === 'stdin') {
          const r = this.readStdin(e, vecs);
          if (r === SUSPEND) return SUSPEND;
          this.setU32(u(nread), r);
          return E.SUCCESS;
        }
        if (e.kind === 'directory') return E.ISDIR;
        if (e.kind !== 'file' || !e.read) return E.BADF;
        const total = this.readFile(fd, e, vecs, e.offset);
        e.offset += total;
        this.setU32(u(nread), total);
        return E.SUCCESS;
      },
      fd_write: (fd: number, iovs: number, n: number, nwritten: number) => {
        fd = u(fd);
        const e = this.entry(fd);
        const vecs = this.iovecs(u(iovs), u(n));
        if (e.kind === 'stdout' || e.kind === 'stderr') {
          let total = 0;
          for (const [, len] of vecs) total += len;
          const data = new Uint8Array(total);
          let at = 0;
          for (const [buf, len] of vecs) {
            this.present(buf, len);
            data.set(this.mem.bytes().subarray(buf, buf + len), at);
            at += len;
          }
          if (total > 0) this.io.write(e.kind === 'stdout' ? 1 : 2, data);
          this.setU32(u(nwritten), total);
          return E.SUCCESS;
        }
        if (e.kind === 'directory') return E.ISDIR;
        if (e.kind !== 'file' || !e.write) return E.BADF;
        let pos = e.offset;
        if (e.fdflags & FDFLAGS.APPEND) pos = Number(this.fs.fstat(this.handle(fd, e)).size);
        const total = this.writeFile(fd, e, vecs, pos);
        e.offset = pos + total;
        this.setU32(u(nwritten), total);
        return E.SUCCESS;
      },
      fd_prestat_get: (fd: number, buf: number) => {
        const e = this.entry(u(fd));
        if (e.preopen === undefined) return E.BADF;
        buf = u(buf);
        this.dirty(buf, 8);
        const v = this.mem.view();
        v.setUint32(buf, PREOPENTYPE_DIR, true);
        v.setUint32(buf + 4, enc.encode(e.preopen).length, true);
        return E.SUCCESS;
      },
      fd_prestat_dir_name: (fd: number, p: number, len: number) => {
        const e = this.entry(u(fd));
        if (e.preopen === undefined) return E.BADF;
        const name = enc.encode(e.preopen);
        if (u(len) < name.length) return E.NAMETOOLONG;
        this.put(u(p), name);
        return E.SUCCESS;
      },
      fd_readdir: (fd: number, buf: number, len: number, cookie: bigint, bufused: number) => {
        fd = u(fd);
        const used = this.readdir(fd, u(buf), u(len), BigInt.asUintN(64, cookie));
        this.setU32(u(bufused), used);
        return E.SUCCESS;
      },
      fd_renumber: (from: number, to: number) => {
        from = u(from); to = u(to);
        const e = this.entry(from);
        this.entry(to);
        if (from === to) return E.SUCCESS;
        this.dropHandle(to);
        this.state.fds[to] = e;
        delete this.state.fds[from];
        const h = this.handles.get(from);
        if (h !== undefined) { this.handles.delete(from); this.handles.set(to, h); }
        const l = this.listings.get(from);
        if (l !== undefined) { this.listings.delete(from); this.listings.set(to, l); }
        return E.SUCCESS;
      },
      fd_seek: (fd: number, off: bigint, whence: number, out: number) => {
        fd = u(fd);
        const e = this.file(fd);
        const delta = BigInt.asIntN(64, off);
        let base: bigint;
        switch (u(whence)) {
          case WHENCE.SET: base = 0n; break;
          case WHENCE.CUR: base = BigInt(e.offset); break;
          case WHENCE.END: base = this.fs.fstat(this.handle(fd, e)).size; break;
          default: return E.INVAL;
        }
        const pos = base + delta;
        if (pos < 0n) return E.INVAL;
        e.offset = Number(pos);
        this.setU64(u(out), pos);
        return E.SUCCESS;
      },
      fd_tell: (fd: number, out: number) => {
        const e = this.file(u(fd));
        this.setU64(u(out), BigInt(e.offset));
        return E.SUCCESS;
      },

      // ---- paths
      path_create_directory: (fd: number, p: number, len: number) => {
        const r = this.pathArg(u(fd), u(p), u(len), false);
        if (r.rel.length === 0) return E.EXIST;
        this.fs.mkdir(r.host);
        return E.SUCCESS;
      },
      path_filestat_get: (fd: number, flags: number, p: number, len: number, buf: number) => {
        const follow = (u(flags) & LOOKUP_SYMLINK_FOLLOW) !== 0;
        const r = this.pathArg(u(fd), u(p), u(len), follow);
        const st = follow ? this.fs.stat(r.host) : this.fs.lstat(r.host);
        this.writeFilestat(u(buf), st);
        return E.SUCCESS;
      },
      path_filestat_set_times: (fd: number, flags: number, p: number, len: number, atim: bigint, mtim: bigint, fst: number) => {
        const follow = (u(flags) & LOOKUP_SYMLINK_FOLLOW) !== 0;
        const r = this.pathArg(u(fd), u(p), u(len), follow);
        const [a, m] = this.times(() => (follow ? this.fs.stat(r.host) : this.fs.lstat(r.host)), atim, mtim, u(fst));
        this.fs.utimes(r.host, a, m, follow);
        return E.SUCCESS;
      },
      path_link: (ofd: number, oflags: number, op: number, olen: number, nfd: number, np: number, nlen: number) => {
        const follow = (u(oflags) & LOOKUP_SYMLINK_FOLLOW) !== 0;
        const src = this.pathArg(u(ofd), u(op), u(olen), follow);
        const dst = this.pathArg(u(nfd), u(np), u(nlen), false);
        if (dst.rel.length === 0) return E.EXIST;
        this.fs.link(src.host, dst.host);
        return E.SUCCESS;
      },
      path_open: (fd: number, dirflags: number, p: number, len: number, oflags: number,
                  base: bigint, inh: bigint, fdflags: number, out: number) =>
        this.pathOpen(u(fd), u(dirflags), u(p), u(len), u(oflags), BigInt.asUintN(64, base),
                      BigInt.asUintN(64, inh), u(fdflags) & 0xffff, u(out)),
      path_readlink: (fd: number, p: number, len: number, buf: number, buflen: number, used: number) => {
        const r = this.pathArg(u(fd), u(p), u(len), false);
        const target = this.fs.readlink(r.host);
        const n = Math.min(target.length, u(buflen));
        this.put(u(buf), target.subarray(0, n));
        this.setU32(u(used), n);
        return E.SUCCESS;
      },
      path_remove_directory: (fd: number, p: number, len: number) => {
        const r = this.pathArg(u(fd), u(p), u(len), false);
        if (r.rel.length === 0) return E.BUSY;
        this.fs.rmdir(r.host);
        return E.SUCCESS;
      },
      path_rename: (fd: number, op: number, olen: number, nfd: number, np: number, nlen: number) => {
        const src = this.pathArg(u(fd), u(op), u(olen), false);
        const dst = this.pathArg(u(nfd), u(np), u(nlen), false);
        if (src.rel.length === 0 || dst.rel.length === 0) return E.BUSY;
        this.fs.rename(src.host, dst.host);
        return E.SUCCESS;
      },
      path_symlink: (op: number, olen: number, fd: number, np: number, nlen: number) => {
        const target = this.readStr(u(op), u(olen));
        const dst = this.pathArg(u(fd), u(np), u(nlen), false);
        if (dst.rel.length === 0) return E.EXIST;
        this.fs.symlink(target, dst.host);
        return E.SUCCESS;
      },
      path_unlink_file: (fd: number, p: number, len: number) => {
        const r = this.pathArg(u(fd), u(p), u(len), false);
        if (r.rel.length === 0) return E.ISDIR;
        this.fs.unlink(r.host);
        return E.SUCCESS;
      },

      // ---- polling
      poll_oneoff: (inp: number, out: number, n: number, nevents: number) =>
        this.pollOneoff(u(inp), u(out), u(n), u(nevents)),

      // ---- sockets: no descriptor is ever a socket
      sock_accept: (fd: number, _flags: number, _out: number) => { this.entry(u(fd)); return E.NOTSUP; },
      sock_recv: (fd: number) => { this.entry(u(fd)); return E.NOTSOCK; },
      sock_send: (fd: number) => { this.entry(u(fd)); return E.NOTSOCK; },
      sock_shutdown: (fd: number) => { this.entry(u(fd)); return E.NOTSOCK; },
    };
  }

  // ---------------------------------------------------------------- implementations

  private putStrings(list: string[], ptrs: number, buf: number): number {
    const encoded = list.map((s) => enc.encode(s));
    this.dirty(ptrs, list.length * 4);
    let at = buf;
    for (let i = 0; i < encoded.length; i++) {
      this.mem.view().setUint32(ptrs + i * 4, at, true);
      const s = encoded[i]!;
      this.dirty(at, s.length + 1);
      const b = this.mem.bytes();
      b.set(s, at);
      b[at + s.length] = 0;
      at += s.length + 1;
    }
    return E.SUCCESS;
  }

  private putSizes(list: string[], countPtr: number, sizePtr: number): number {
    const size = this.sizeOf(list);
    this.setU32(countPtr, list.length);
    this.setU32(sizePtr, size);
    return E.SUCCESS;
  }

  /** Encoded size of a string list (args, env), NUL terminators included. The lists are
   *  fixed for a process's life but may be replaced: the cache checks identity and content. */
  private sizeCache: { list: string[]; copy: string[]; size: number } | null = null;
  private sizeCache2: { list: string[]; copy: string[]; size: number } | null = null;
  private sizeOf(list: string[]): number {
    for (const c of [this.sizeCache, this.sizeCache2]) {
      if (c && c.list === list && c.copy.length === list.length) {
        let same = true;
        for (let i = 0; i < list.length; i++) if (c.copy[i] !== list[i]) { same = false; break; }
        if (same) return c.size;
      }
    }
    let size = 0;
    for (const s of list) size += Buffer.byteLength(s) + 1;
    this.sizeCache2 = this.sizeCache;
    this.sizeCache = { list, copy: [...list], size };
    return size;
  }

  /** Rights (a decimal u64 string) written as two u32 halves, parsed once per value. */
  private readonly rightsCache = new Map<string, [number, number]>();
  private setRights(v: DataView, at: number, rights: string): void {
    let r = this.rightsCache.get(rights);
    if (r === undefined) {
      const n = BigInt.asUintN(64, BigInt(rights));
      r = [Number(n & 0xffffffffn), Number(n >> 32n)];
      if (this.rightsCache.size >= 64) this.rightsCache.clear();
      this.rightsCache.set(rights, r);
    }
    v.setUint32(at, r[0], true);
    v.setUint32(at + 4, r[1], true);
  }

  private clockNow(id: number): bigint | null {
    switch (id) {
      case CLOCK.REALTIME: return realtimeNs();
      case CLOCK.MONOTONIC:
      case CLOCK.PROCESS_CPUTIME:
      case CLOCK.THREAD_CPUTIME: return this.monotonicNs();
      default: return null;
    }
  }

  private readFile(fd: number, e: FdEntry, vecs: [number, number][], pos: number): number {
    const h = this.handle(fd, e);
    if (this.fs.readv && vecs.length > 1) {
      // One system call for all iovecs (wasi-libc's stdio reads into the caller's buffer and its own).
      for (const [buf, len] of vecs) this.dirty(buf, len);
      return this.fs.readv(h, vecs.map(([buf, len]) => this.mem.bytes().subarray(buf, buf + len)), pos);
    }
    let total = 0;
    for (const [buf, len] of vecs) {
      if (len === 0) continue;
      this.dirty(buf, len);
      const n = this.fs.read(h, this.mem.bytes().subarray(buf, buf + len), pos + total);
      total += n;
      if (n < len) break;
    }
    return total;
  }

  private writeFile(fd: number, e: FdEntry, vecs: [number, number][], pos: number): number {
    const h = this.handle(fd, e);
    let total = 0;
    if (this.fs.writev && vecs.length > 1) {
      for (const [buf, len] of vecs) this.present(buf, len);
      const want = vecs.reduce((n, [, len]) => n + len, 0);
      total = this.fs.writev(h, vecs.map(([buf, len]) => this.mem.bytes().subarray(buf, buf + len)), pos);
      if (total >= want || total <= 0) return Math.max(total, 0);
      vecs = this.after(vecs, total); // a short write: the rest one iovec at a time, below
    }
    for (const [buf, len] of vecs) {
      if (len === 0) continue;
      this.present(buf, len);
      const data = this.mem.bytes().subarray(buf, buf + len);
      let done = 0;
      while (done < len) {
        const n = this.fs.write(h, data.subarray(done), pos + total + done);
        if (n <= 0) break;
        done += n;
      }
      total += done;
      if (done < len) break;
    }
    return total;
  }

  /** The iovecs left after the first `skip` bytes. */
  private after(vecs: [number, number][], skip: number): [number, number][] {
    const out: [number, number][] = [];
    for (const [buf, len] of vecs) {
      if (skip >= len) { skip -= len; continue; }
      out.push([buf + skip, len - skip]);
      skip = 0;
    }
    return out;
  }

  /** Reads stdin into the iovecs, blocking through io.wait; SUSPEND if stopped (nothing consumed). */
  private readStdin(e: FdEntry, vecs: [number, number][]): number | Suspend {
    let max = 0;
    for (const [, len] of vecs) max += len;
    if (max === 0) return 0;
    for (;;) {
      const chunk = this.io.takeStdin(max);
      if (chunk !== null) {
        let at = 0;
        for (const [buf, len] of vecs) {
          if (at >= chunk.length) break;
          const part = chunk.subarray(at, at + Math.min(len, chunk.length - at));
          this.put(buf, part);
          at += part.length;
        }
        return at;
      }
      if (e.fdflags & FDFLAGS.NONBLOCK) fail(E.AGAIN);
      if (this.io.wait(null, true) === 'stop') return SUSPEND;
    }
  }

  private readdir(fd: number, buf: number, len: number, cookie: bigint): number {
    const e = this.entry(fd);
    if (e.kind !== 'directory') fail(E.NOTDIR);
    let list = cookie === 0n ? undefined : this.listings.get(fd);
    if (!list) {
      list = [
        { name: '.', filetype: FILETYPE.DIRECTORY },
        { name: '..', filetype: FILETYPE.DIRECTORY },
        ...this.fs.readdir(e.hostPath!),
      ];
      this.listings.set(fd, list);
    }
    let used = 0;
    for (let i = Number(cookie); i < list.length && used < len; i++) {
      const d = list[i]!;
      const name = enc.encode(d.name);
      let ino = 0n;
      try { ino = this.fs.lstat(path.join(e.hostPath!, d.name)).ino; } catch { /* raced with unlink */ }
      const ent = new Uint8Array(24 + name.length);
      const v = new DataView(ent.buffer);
      v.setBigUint64(0, BigInt(i + 1), true);
      v.setBigUint64(8, ino, true);
      v.setUint32(16, name.length, true);
      v.setUint8(20, d.filetype);
      ent.set(name, 24);
      const n = Math.min(ent.length, len - used);
      this.put(buf + used, ent.subarray(0, n));
      used += n;
    }
    return used;
  }

  private pathOpen(dirfd: number, dirflags: number, p: number, len: number, oflags: number,
                   base: bigint, inh: bigint, fdflags: number, out: number): number {
    const parent = this.dir(dirfd);
    const follow = (dirflags & LOOKUP_SYMLINK_FOLLOW) !== 0;
    const guestRel = this.readStr(p, len);
    const r = this.resolve(dirfd, guestRel, follow);
    const read = (base & (RIGHTS.FD_READ | RIGHTS.FD_READDIR)) !== 0n;
    const write = (base & (RIGHTS.FD_WRITE | RIGHTS.FD_DATASYNC | RIGHTS.FD_ALLOCATE | RIGHTS.FD_FILESTAT_SET_SIZE)) !== 0n;
    const wantDir = (oflags & OFLAGS.DIRECTORY) !== 0;
    const create = (oflags & OFLAGS.CREAT) !== 0;
    if (r.rel.length === 0 && (create && oflags & OFLAGS.EXCL)) return E.EXIST;
    const h = this.fs.open(r.host, {
      read, write, create, excl: (oflags & OFLAGS.EXCL) !== 0, trunc: (oflags & OFLAGS.TRUNC) !== 0,
      directory: wantDir, nofollow: !follow,
    });
    let st: HostStat;
    try { st = this.fs.fstat(h); } catch (err) { this.fs.close(h); throw err; }
    const isDir = st.filetype === FILETYPE.DIRECTORY;
    const pInh = BigInt(parent.rightsInheriting);
    const fd = this.allocFd();
    const guestPath = parent.guestPath !== undefined
      ? path.posix.join(parent.guestPath, ...r.rel) : r.rel.join('/');
    this.state.fds[fd] = {
      kind: isDir ? 'directory' : 'file',
      hostPath: r.host.endsWith('/') && r.host.length > 1 ? r.host.slice(0, -1) : r.host,
      guestPath,
      offset: 0,
      fdflags,
      read, write,
      rightsBase: (base & pInh).toString(),
      rightsInheriting: (inh & pInh).toString(),
    };
    if (isDir) this.fs.close(h);
    else this.handles.set(fd, h);
    this.setU32(out, fd);
    return E.SUCCESS;
  }

  private pollOneoff(inp: number, out: number, n: number, neventsPtr: number): number | Suspend {
    if (n === 0) return E.INVAL;
    this.present(inp, n * 48);
    const v0 = this.mem.view();
    interface Sub { userdata: bigint; type: number; deadline?: bigint; rel?: bigint; error?: number; fd?: number }
    const subs: Sub[] = [];
    for (let i = 0; i < n; i++) {
      const s = inp + i * 48;
      const userdata = v0.getBigUint64(s, true);
      const type = v0.getUint8(s + 8);
      if (type === EVENTTYPE.CLOCK) {
        const id = v0.getUint32(s + 16, true);
        const timeout = v0.getBigUint64(s + 24, true);
        const flags = v0.getUint16(s + 40, true);
        let deadline: bigint | undefined;
        let error: number | undefined;
        if (id > 3) error = E.INVAL;
        else if (flags & SUBCLOCK_ABSTIME) {
          deadline = id === CLOCK.REALTIME ? this.monotonicNs() + (timeout - realtimeNs()) : timeout;
        }
        subs.push({ userdata, type, deadline, error, rel: deadline === undefined && error === undefined ? timeout : undefined });
      } else if (type === EVENTTYPE.FD_READ || type === EVENTTYPE.FD_WRITE) {
        const fd = v0.getUint32(s + 16, true);
        subs.push({ userdata, type, fd, error: this.state.fds[fd] ? undefined : E.BADF });
      } else {
        subs.push({ userdata, type, error: E.INVAL });
      }
    }
    // A poll interrupted by a stop is called again with the same arguments (maybe in a new
    // host, whose guest clock continued from the capture): keep the original deadlines.
    let start: bigint;
    if (this.state.pendingPollStartNs != null) start = BigInt(this.state.pendingPollStartNs);
    else {
      start = this.monotonicNs();
      const pending = this.state.pendingDeadlineNs;
      const rels = subs.filter((s) => s.rel !== undefined).map((s) => s.rel!);
      if (pending != null && rels.length > 0) {
        const minRel = rels.reduce((a, b) => (a < b ? a : b));
        start = BigInt(pending) - minRel;
      }
    }
    for (const s of subs) if (s.rel !== undefined) s.deadline = start + s.rel;
    for (;;) {
      const now = this.monotonicNs();
      const events: { userdata: bigint; error: number; type: number; nbytes: bigint; flags: number }[] = [];
      let wantStdin = false;
      let minDeadline: bigint | null = null;
      for (const s of subs) {
        if (s.error !== undefined) {
          events.push({ userdata: s.userdata, error: s.error, type: s.type, nbytes: 0n, flags: 0 });
        } else if (s.type === EVENTTYPE.CLOCK) {
          if (s.deadline! <= now) events.push({ userdata: s.userdata, error: 0, type: s.type, nbytes: 0n, flags: 0 });
          else if (minDeadline === null || s.deadline! < minDeadline) minDeadline = s.deadline!;
        } else {
          const e = this.state.fds[s.fd!]!;
          if (s.type === EVENTTYPE.FD_READ && e.kind === 'stdin') {
            const st = this.stdinReady();
            if (st.ready) events.push({ userdata: s.userdata, error: 0, type: s.type, nbytes: st.nbytes, flags: st.eof ? EVENT_FD_READWRITE_HANGUP : 0 });
            else wantStdin = true;
          } else {
            let nbytes = 0n;
            if (s.type === EVENTTYPE.FD_READ && e.kind === 'file') {
              try {
                const size = this.fs.fstat(this.handle(s.fd!, e)).size;
                nbytes = size > BigInt(e.offset) ? size - BigInt(e.offset) : 0n;
              } catch { nbytes = 0n; }
            }
            events.push({ userdata: s.userdata, error: 0, type: s.type, nbytes, flags: 0 });
          }
        }
      }
      if (events.length > 0) {
        this.state.pendingDeadlineNs = null;
        this.state.pendingPollStartNs = null;
        this.dirty(out, events.length * 32);
        const v = this.mem.view();
        events.forEach((ev, i) => {
          const o = out + i * 32;
          v.setBigUint64(o, ev.userdata, true);
          v.setUint16(o + 8, ev.error, true);
          v.setUint8(o + 10, ev.type);
          for (let k = 11; k < 16; k++) v.setUint8(o + k, 0);
          v.setBigUint64(o + 16, ev.nbytes, true);
          v.setUint16(o + 24, ev.flags, true);
          for (let k = 26; k < 32; k++) v.setUint8(o + k, 0);
        });
        this.setU32(neventsPtr, events.length);
        return E.SUCCESS;
      }
      this.state.pendingPollStartNs = start.toString();
      this.state.pendingDeadlineNs = minDeadline === null ? null : minDeadline.toString();
      const hostDeadline = minDeadline === null ? null
        : performance.now() + Number(minDeadline - this.monotonicNs()) / 1e6;
      const r = this.io.wait(hostDeadline, wantStdin);
      if (r === 'stop') return SUSPEND;
    }
  }
}
