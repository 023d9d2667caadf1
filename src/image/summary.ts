// `ferry inspect`: a JSON-able summary of an image and its human-readable form.

import type { ProcessImage, SectionInfo } from './types.ts';
import type { Json } from './types.ts';

export interface ImageSummary {
  formatVersion: number;
  totalBytes: number;
  meta: {
    pid: string; program: string; createdAt: string; node: string; reason: string;
    ferryVersion: string; pageSize: number; extra: Record<string, Json>;
  };
  module: { sha256: string; size: number | null; path: string | null; embedded: boolean };
  memory: {
    pageSize: number; logicalBytes: number; storedBytes: number;
    pages: { total: number; zero: number; stored: number };
  };
  execution: {
    asyncifyBytes: number; asyncifyDataAddr: number;
    globals: { name: string; type: string; value: string }[];
    extra: Record<string, Json>;
  };
  wasi: {
    args: string[]; env: string[];
    preopens: { host: string; guest: string }[];
    fds: {
      fd: number; kind: string; guestPath: string | null; hostPath: string | null;
      preopen: string | null; offset: number; read: boolean; write: boolean; fdflags: number;
    }[];
    monotonicNs: string | null; pendingDeadlineNs: string | null;
    stdinBufferedBytes: number; stdinTakenBytes: number; stdinEof: boolean; exitCode: number | null;
  };
  sections: SectionInfo[];
  extraSections: { type: number; version: number; required: boolean; length: number }[];
}

function strArray(v: unknown): string[] {
  return Array.isArray(v) ? v.map(String) : [];
}

export function summarizeImage(img: ProcessImage): ImageSummary {
  // The WASI state is another module's plain data: read it defensively.
  const w = img.wasi as unknown as Record<string, unknown>;
  const fdsRaw = (typeof w.fds === 'object' && w.fds !== null ? w.fds : {}) as Record<string, Record<string, unknown>>;
  const fds = Object.entries(fdsRaw)
    .map(([fd, e]) => ({
      fd: Number(fd),
      kind: String(e?.kind ?? '?'),
      guestPath: typeof e?.guestPath === 'string' ? e.guestPath : null,
      hostPath: typeof e?.hostPath === 'string' ? e.hostPath : null,
      preopen: typeof e?.preopen === 'string' ? e.preopen : null,
      offset: typeof e?.offset === 'number' ? e.offset : 0,
      read: e?.read === true,
      write: e?.write === true,
      fdflags: typeof e?.fdflags === 'number' ? e.fdflags : 0,
    }))
    .sort((a, b) => a.fd - b.fd);
  const stdin = typeof w.stdinBuffered === 'string' ? Buffer.from(w.stdinBuffered, 'base64').length : 0;
  const m = img.meta;
  return {
    formatVersion: img.formatVersion,
    totalBytes: img.totalBytes,
    meta: {
      pid: m.pid, program: m.program, createdAt: m.createdAt, node: m.node, reason: m.reason,
      ferryVersion: m.ferryVersion, pageSize: m.pageSize, extra: m.extra,
    },
    module: { sha256: img.module.sha256, size: img.module.size, path: img.module.path, embedded: img.module.embedded },
    memory: {
      pageSize: img.memory.pageSize, logicalBytes: img.memory.logicalBytes,
      storedBytes: img.memory.storedBytes, pages: img.memory.counts,
    },
    execution: {
      asyncifyBytes: img.execution.asyncify.length,
      asyncifyDataAddr: img.execution.asyncifyDataAddr,
      globals: img.execution.globals.map((g) => ({ name: g.name, type: g.type, value: g.value })),
      extra: img.execution.extra,
    },
    wasi: {
      args: strArray(w.args), env: strArray(w.env),
      preopens: Array.isArray(w.preopens) ? (w.preopens as { host: string; guest: string }[]) : [],
      fds,
      monotonicNs: typeof w.monotonicNs === 'string' ? w.monotonicNs : null,
      pendingDeadlineNs: typeof w.pendingDeadlineNs === 'string' ? w.pendingDeadlineNs : null,
      stdinBufferedBytes: stdin,
      stdinTakenBytes: typeof w.stdinTakenBytes === 'number' ? w.stdinTakenBytes : 0,
      stdinEof: w.stdinEof === true,
      exitCode: typeof w.exitCode === 'number' ? w.exitCode : null,
    },
    sections: img.sections,
    extraSections: img.extraSections.map((s) => ({ type: s.type, version: s.version, required: s.required, length: s.payload.length })),
  };
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
  return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${units[u]}`;
}

function pct(a: number, b: number): string {
  return b === 0 ? '0%' : `${((100 * a) / b).toFixed(1)}%`;
}

export function formatSummary(s: ImageSummary): string {
  const L: string[] = [];
  const m = s.meta;
  L.push(`ferry process image (format ${s.formatVersion}), ${bytes(s.totalBytes)} (${s.totalBytes} bytes)`);
  L.push(`  pid        ${m.pid}`);
  L.push(`  program    ${m.program}`);
  L.push(`  reason     ${m.reason} on node ${m.node} at ${m.createdAt} (ferry ${m.ferryVersion})`);
  if (Object.keys(m.extra).length > 0) L.push(`  extra      ${JSON.stringify(m.extra)}`);
  const mod = s.module;
  L.push(`module`);
  L.push(`  sha256     ${mod.sha256}`);
  L.push(`  size       ${mod.size === null ? 'unknown' : `${bytes(mod.size)} (${mod.size} bytes)`}, ${mod.embedded ? 'embedded' : 'not embedded (found by hash or path)'}`);
  if (mod.path !== null) L.push(`  path       ${mod.path}`);
  const mem = s.memory;
  L.push(`memory`);
  L.push(`  logical    ${bytes(mem.logicalBytes)} (${mem.logicalBytes / 65536} wasm pages)`);
  L.push(`  pages      ${mem.pages.total} of ${bytes(mem.pageSize)}: ${mem.pages.stored} stored (${pct(mem.pages.stored, mem.pages.total)}), ${mem.pages.zero} zero`);
  L.push(`  stored     ${bytes(mem.storedBytes)}`);
  const ex = s.execution;
  L.push(`execution`);
  L.push(`  asyncify   ${bytes(ex.asyncifyBytes)} at 0x${ex.asyncifyDataAddr.toString(16)}`);
  L.push(`  globals    ${ex.globals.length}${ex.globals.length ? ': ' + ex.globals.slice(0, 8).map((g) => `${g.name}:${g.type}=${g.value}`).join(' ') + (ex.globals.length > 8 ? ' ...' : '') : ''}`);
  if (Object.keys(ex.extra).length > 0) L.push(`  extra      ${JSON.stringify(ex.extra)}`);
  const w = s.wasi;
  L.push(`wasi`);
  L.push(`  args       ${JSON.stringify(w.args)}`);
  L.push(`  env        ${w.env.length} variables`);
  for (const p of w.preopens) L.push(`  preopen    ${p.guest} -> ${p.host}`);
  for (const f of w.fds) {
    const mode = `${f.read ? 'r' : ''}${f.write ? 'w' : ''}` || '-';
    const where = f.guestPath ?? f.preopen ?? '';
    const host = f.hostPath && f.hostPath !== where ? ` (${f.hostPath})` : '';
    const offset = f.kind === 'file' ? ` offset ${f.offset}` : '';
    L.push(`  fd ${String(f.fd).padEnd(7)} ${f.kind} ${mode}${where ? ' ' + where : ''}${host}${offset}`);
  }
  if (w.monotonicNs !== null) L.push(`  clock      ${w.monotonicNs} ns${w.pendingDeadlineNs !== null ? `, blocked until ${w.pendingDeadlineNs} ns` : ''}`);
  if (w.stdinBufferedBytes > 0 || w.stdinEof || w.stdinTakenBytes > 0) L.push(`  stdin      ${w.stdinTakenBytes} bytes read, ${w.stdinBufferedBytes} of them not consumed yet${w.stdinEof ? ', at EOF' : ''}`);
  if (w.exitCode !== null) L.push(`  exited     ${w.exitCode}`);
  L.push(`sections`);
  for (const sec of s.sections) {
    L.push(`  ${String(sec.index).padStart(2)} ${sec.name.padEnd(10)} v${sec.version} ${sec.required ? 'required' : 'optional'} ${bytes(sec.length)}`);
  }
  return L.join('\n');
}
