// The file system behind the WASI host. All calls are synchronous and throw errors
// carrying a Node-style `code` ('ENOENT', ...). The default is node:fs on local paths;
// a remote backend (file server on the home node) can implement the same interface.

import * as fs from 'node:fs';
import { FILETYPE } from './constants.ts';

export interface HostStat {
  dev: bigint;
  ino: bigint;
  filetype: number;        // WASI filetype
  nlink: bigint;
  size: bigint;
  atimNs: bigint;
  mtimNs: bigint;
  ctimNs: bigint;
}

export interface HostDirent { name: string; filetype: number }

export interface OpenFlags {
  read: boolean;
  write: boolean;
  create?: boolean;
  excl?: boolean;
  trunc?: boolean;
  directory?: boolean;     // fail with ENOTDIR unless a directory
  nofollow?: boolean;      // fail with ELOOP if the final component is a symlink
}

export interface HostFs {
  /** Opens and returns a backend handle (an OS fd for node:fs). */
  open(path: string, flags: OpenFlags): number;
  close(h: number): void;
  /** Positional read into buf; returns bytes read (0 at end of file). */
  read(h: number, buf: Uint8Array, position: number): number;
  /** Positional write of buf; returns bytes written. */
  write(h: number, buf: Uint8Array, position: number): number;
  /** Positional scatter read (one system call for all of an fd_read's iovecs); optional. */
  readv?(h: number, bufs: Uint8Array[], position: number): number;
  /** Positional gather write; returns bytes written (may be short); optional. */
  writev?(h: number, bufs: Uint8Array[], position: number): number;
  fstat(h: number): HostStat;
  stat(path: string): HostStat;
  lstat(path: string): HostStat;
  ftruncate(h: number, len: number): void;
  fsync(h: number): void;
  fdatasync(h: number): void;
  /** Times in seconds since the epoch (fractional). */
  futimes(h: number, atime: number, mtime: number): void;
  utimes(path: string, atime: number, mtime: number, followSymlink: boolean): void;
  mkdir(path: string): void;
  rmdir(path: string): void;
  unlink(path: string): void;
  rename(from: string, to: string): void;
  link(existing: string, newPath: string): void;
  symlink(target: string, path: string): void;
  readlink(path: string): Uint8Array;
  readdir(path: string): HostDirent[];
}

function toStat(s: fs.BigIntStats): HostStat {
  return {
    dev: s.dev, ino: s.ino, filetype: statFiletype(s), nlink: s.nlink, size: s.size,
    atimNs: s.atimeNs, mtimNs: s.mtimeNs, ctimNs: s.ctimeNs,
  };
}

function statFiletype(s: fs.BigIntStats | fs.Dirent): number {
  if (s.isFile()) return FILETYPE.REGULAR_FILE;
  if (s.isDirectory()) return FILETYPE.DIRECTORY;
  if (s.isSymbolicLink()) return FILETYPE.SYMBOLIC_LINK;
  if (s.isCharacterDevice()) return FILETYPE.CHARACTER_DEVICE;
  if (s.isBlockDevice()) return FILETYPE.BLOCK_DEVICE;
  if (s.isSocket()) return FILETYPE.SOCKET_STREAM;
  return FILETYPE.UNKNOWN;
}

const C = fs.constants;

/** HostFs over node:fs. */
export const nodeFs: HostFs = {
  open(path, f) {
    let flags = f.read && f.write ? C.O_RDWR : f.write ? C.O_WRONLY : C.O_RDONLY;
    if (f.create) flags |= C.O_CREAT;
    if (f.excl) flags |= C.O_EXCL;
    if (f.trunc) flags |= C.O_TRUNC;
    if (f.directory) flags |= C.O_DIRECTORY;
    if (f.nofollow) flags |= C.O_NOFOLLOW;
    return fs.openSync(path, flags, 0o666);
  },
  close: (h) => fs.closeSync(h),
  read: (h, buf, pos) => fs.readSync(h, buf, 0, buf.length, pos),
  write: (h, buf, pos) => fs.writeSync(h, buf, 0, buf.length, pos),
  readv: (h, bufs, pos) => fs.readvSync(h, bufs, pos),
  writev: (h, bufs, pos) => fs.writevSync(h, bufs, pos),
  fstat: (h) => toStat(fs.fstatSync(h, { bigint: true })),
  stat: (p) => toStat(fs.statSync(p, { bigint: true })),
  lstat: (p) => toStat(fs.lstatSync(p, { bigint: true })),
  ftruncate: (h, len) => fs.ftruncateSync(h, len),
  fsync: (h) => fs.fsyncSync(h),
  fdatasync: (h) => fs.fdatasyncSync(h),
  futimes: (h, a, m) => fs.futimesSync(h, a, m),
  utimes: (p, a, m, follow) => (follow ? fs.utimesSync(p, a, m) : fs.lutimesSync(p, a, m)),
  mkdir: (p) => fs.mkdirSync(p, 0o777),
  rmdir: (p) => fs.rmdirSync(p),
  unlink: (p) => fs.unlinkSync(p),
  rename: (a, b) => fs.renameSync(a, b),
  link: (a, b) => fs.linkSync(a, b),
  symlink: (t, p) => fs.symlinkSync(t, p),
  readlink: (p) => fs.readlinkSync(p, { encoding: 'buffer' }),
  readdir: (p) => fs.readdirSync(p, { withFileTypes: true }).map((d) => ({ name: d.name, filetype: statFiletype(d) })),
};
