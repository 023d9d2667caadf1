// encodeImage / decodeImage: ProcessImage <-> the binary layout of format.ts.

import crypto from 'node:crypto';
import fs from 'node:fs';
import type { WasiState } from '../wasi/types.ts';
import {
  END_PAYLOAD_SIZE, FILE_HEADER_SIZE, FORMAT_VERSION, INCOMPAT_FLAGS_MASK, ImageError,
  KNOWN_INCOMPAT_FLAGS, MAGIC, PAGE_SIZES, SECTION_FLAG_REQUIRED, SECTION_HEADER_SIZE,
  SECTION_VERSIONS, SectionType, crc32, sectionName, writeFileHeader, writeSectionHeader,
  DEFAULT_PAGE_SIZE,
} from './format.ts';
import type { SectionHeader } from './format.ts';
import { checkGlobal } from './globals.ts';
import { MemoryImage, decodeMemory, encodeMemory, encodeMemoryImage, isValidPageSize } from './memory.ts';
import type {
  ExecutionState, ImageMeta, Json, ModuleInfo, ProcessImage, ProcessImageInput, RawSection, SectionInfo,
} from './types.ts';

export const FERRY_VERSION: string = (() => {
  try {
    const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch { return 'unknown'; }
})();

const SHA256_RE = /^[0-9a-f]{64}$/;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.length);
}

export function sha256Hex(bytes: Uint8Array): string {
  return crypto.createHash('sha256').update(bytes).digest('hex');
}

function jsonBytes(v: unknown): Buffer {
  return Buffer.from(JSON.stringify(v), 'utf8');
}

function jsonAndBlob(header: unknown, blob: Uint8Array | null): Uint8Array[] {
  const j = jsonBytes(header);
  const n = Buffer.alloc(4);
  n.writeUInt32LE(j.length, 0);
  return blob && blob.length > 0 ? [n, j, blob] : [n, j];
}

interface PendingSection { type: number; version: number; required: boolean; chunks: Uint8Array[]; length?: number; crc?: number }

/**
 * Encode an image as a list of chunks (headers are small fresh buffers; memory pages and
 * module/asyncify bytes are views of the caller's data, not copies: keep them unchanged
 * until the chunks are written). Throws ImageError('invalid-input') on bad input.
 */
export function encodeImage(img: ProcessImageInput): Buffer[] {
  const invalid = (why: string): never => { throw new ImageError('invalid-input', `cannot encode image: ${why}`); };

  // meta
  const m = img.meta;
  const pageSize = m.pageSize ?? DEFAULT_PAGE_SIZE;
  if (!isValidPageSize(pageSize)) invalid(`page size ${pageSize} is not one of ${PAGE_SIZES.join(', ')}`);
  for (const k of ['pid', 'program', 'node', 'reason'] as const) {
    if (typeof m[k] !== 'string') invalid(`meta.${k} must be a string`);
  }
  if (m.extra !== undefined && !isPlainObject(m.extra)) invalid('meta.extra must be an object');
  const meta: ImageMeta = {
    pid: m.pid, program: m.program, createdAt: m.createdAt ?? new Date().toISOString(),
    node: m.node, reason: m.reason, ferryVersion: m.ferryVersion ?? FERRY_VERSION,
    pageSize, extra: m.extra ?? {},
  };

  // module
  const mod = img.module;
  const bytes = mod.bytes ?? null;
  let sha = mod.sha256;
  if (bytes) {
    const actual = sha256Hex(bytes);
    if (sha !== undefined && sha !== actual) invalid(`module sha256 ${sha} does not match its bytes (${actual})`);
    sha = actual;
  }
  if (sha === undefined || !SHA256_RE.test(sha)) invalid('module.sha256 (64 lowercase hex digits) or module.bytes is required');
  const embedded = mod.embedded ?? false;
  if (embedded && !bytes) invalid('module.embedded is set but module.bytes is missing');
  const size = bytes ? bytes.length : (mod.size ?? null);
  const moduleHeader = { sha256: sha, size, path: mod.path ?? null, embedded };

  // execution
  const ex = img.execution;
  if (!Array.isArray(ex.globals)) invalid('execution.globals must be an array');
  for (const g of ex.globals) { const why = checkGlobal(g); if (why) invalid(`global ${why}`); }
  if (!(ex.asyncify instanceof Uint8Array)) invalid('execution.asyncify must be a Uint8Array');
  if (!(Number.isInteger(ex.asyncifyDataAddr) && ex.asyncifyDataAddr >= 0 && ex.asyncifyDataAddr < 2 ** 32)) {
    invalid(`execution.asyncifyDataAddr ${ex.asyncifyDataAddr} is not a u32`);
  }
  if (ex.extra !== undefined && !isPlainObject(ex.extra)) invalid('execution.extra must be an object');
  const execHeader = {
    globals: ex.globals.map((g) => ({ name: g.name, type: g.type, value: g.value })),
    asyncifyDataAddr: ex.asyncifyDataAddr,
    extra: ex.extra ?? {},
  };

  if (!isPlainObject(img.wasi)) invalid('wasi must be an object');

  // memory
  const mem = img.memory instanceof MemoryImage
    ? (img.memory.pageSize === pageSize ? encodeMemoryImage(img.memory)
      : invalid(`memory image page size ${img.memory.pageSize} differs from meta.pageSize ${pageSize}`))
    : encodeMemory(img.memory, pageSize);

  const sections: PendingSection[] = [
    { type: SectionType.meta, version: 1, required: true, chunks: [jsonBytes(meta)] },
    { type: SectionType.module, version: 1, required: true, chunks: jsonAndBlob(moduleHeader, embedded ? bytes : null) },
    { type: SectionType.execution, version: 1, required: true, chunks: jsonAndBlob(execHeader, ex.asyncify) },
    { type: SectionType.wasi, version: 1, required: true, chunks: [jsonBytes(img.wasi)] },
  ];
  for (const s of img.extraSections ?? []) {
    if (!(Number.isInteger(s.type) && s.type > 0 && s.type < 0xffff) || SECTION_VERSIONS[s.type] !== undefined) {
      invalid(`extra section type ${s.type} is reserved or a known section type`);
    }
    if (!(Number.isInteger(s.version) && s.version >= 0 && s.version <= 0xffff)) invalid(`extra section version ${s.version} is not a u16`);
    sections.push({ type: s.type, version: s.version, required: !!s.required, chunks: [s.payload] });
  }
  sections.push({ type: SectionType.memory, version: 1, required: true, chunks: mem.chunks, length: mem.length, crc: mem.crc });

  // assemble
  const out: Buffer[] = [];
  const fileHeader = writeFileHeader(sections.length + 1);
  out.push(fileHeader);
  let tableCrc = crc32(fileHeader);
  let total = FILE_HEADER_SIZE;
  for (const s of sections) {
    let { length, crc } = s;
    if (length === undefined || crc === undefined) {
      length = 0; crc = 0;
      for (const c of s.chunks) { length += c.length; crc = crc32(c, crc); }
    }
    const h = writeSectionHeader(s.type, s.version, s.required ? SECTION_FLAG_REQUIRED : 0, length, crc);
    tableCrc = crc32(h, tableCrc);
    out.push(h);
    for (const c of s.chunks) if (c.length > 0) out.push(asBuffer(c));
    total += SECTION_HEADER_SIZE + length;
  }
  total += SECTION_HEADER_SIZE + END_PAYLOAD_SIZE;
  const endPayload = Buffer.alloc(END_PAYLOAD_SIZE);
  endPayload.writeBigUInt64LE(BigInt(total), 0);
  const endHeaderPre = writeSectionHeader(SectionType.end, 1, SECTION_FLAG_REQUIRED, END_PAYLOAD_SIZE, 0);
  tableCrc = crc32(endHeaderPre.subarray(0, 16), tableCrc);
  endPayload.writeUInt32LE(tableCrc, 8);
  out.push(writeSectionHeader(SectionType.end, 1, SECTION_FLAG_REQUIRED, END_PAYLOAD_SIZE, crc32(endPayload)));
  out.push(endPayload);
  return out;
}

/** Total length of encoded chunks. */
export function imageLength(chunks: readonly Uint8Array[]): number {
  let n = 0;
  for (const c of chunks) n += c.length;
  return n;
}

export interface DecodeOptions {
  /** Named in error messages, e.g. the file path. */
  source?: string;
}

/** A file's first bytes, to say what a wrong file is: text as text ("hello\n"), anything else
 *  in hex (0x7f454c46...: an ELF binary); a stray file's first bytes often say what it is. */
export function showHead(bytes: Uint8Array): string {
  const head = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.length, 8));
  return /^[\t\n\r\x20-\x7e]*$/.test(head.toString('latin1')) ? JSON.stringify(head.toString('latin1')) : `0x${head.toString('hex')}`;
}

/**
 * Decode and validate an image. Page data, module bytes and asyncify bytes are views
 * into `buf` (no copies): keep it unchanged while the image is in use.
 * Throws ImageError on any problem.
 */
export function decodeImage(buf: Uint8Array, opts: DecodeOptions = {}): ProcessImage {
  const p = opts.source !== undefined ? `image ${opts.source}` : 'image';
  const fail = (code: ConstructorParameters<typeof ImageError>[0], msg: string): never => {
    throw new ImageError(code, `${p} ${msg}`);
  };
  const b = asBuffer(buf);

  // file header
  const magicLen = Math.min(b.length, MAGIC.length);
  if (b.compare(MAGIC, 0, magicLen, 0, magicLen) !== 0) {
    fail('bad-magic', `is not a ferry process image (it begins ${showHead(b)}; an image begins "${MAGIC.toString('latin1')}")`);
  }
  if (b.length < 10) fail('truncated', `is truncated: the file header needs ${FILE_HEADER_SIZE} bytes, ${b.length} remain`);
  const version = b.readUInt16LE(8);
  if (version > FORMAT_VERSION) fail('version', `format version ${version} is newer than this ferry understands (${FORMAT_VERSION})`);
  if (version < 1) fail('version', `format version ${version} is not supported (this ferry reads ${FORMAT_VERSION})`);
  if (b.length < FILE_HEADER_SIZE) fail('truncated', `is truncated: the file header needs ${FILE_HEADER_SIZE} bytes, ${b.length} remain`);
  const flags = b.readUInt16LE(10);
  const count = b.readUInt32LE(12);

  // bounds-only walk of the section table
  const headers: SectionHeader[] = [];
  let off = FILE_HEADER_SIZE;
  for (let i = 0; i < count; i++) {
    const remain = b.length - off;
    if (remain < SECTION_HEADER_SIZE) {
      fail('truncated', `is truncated: section ${i} of ${count} needs a ${SECTION_HEADER_SIZE}-byte header, ${remain} bytes remain`);
    }
    const type = b.readUInt16LE(off);
    const lenBig = b.readBigUInt64LE(off + 8);
    const avail = remain - SECTION_HEADER_SIZE;
    if (lenBig > BigInt(avail)) {
      fail('truncated', `is truncated: section ${i} (${sectionName(type)}) needs ${lenBig} bytes, ${avail} remain`);
    }
    const length = Number(lenBig);
    headers.push({
      index: i, type, version: b.readUInt16LE(off + 2), flags: b.readUInt16LE(off + 4),
      reserved: b.readUInt16LE(off + 6), length, crc: b.readUInt32LE(off + 16),
      headerOffset: off, payloadOffset: off + SECTION_HEADER_SIZE,
    });
    off += SECTION_HEADER_SIZE + length;
    if (type === SectionType.end) break;
  }
  const end = headers[headers.length - 1];
  if (!end || end.type !== SectionType.end) {
    fail('malformed', `is malformed: no END trailer after ${count} sections`);
  }
  if (end!.index !== count - 1) fail('malformed', `is malformed: END trailer is section ${end!.index} but the header announces ${count} sections`);
  if (off !== b.length) fail('malformed', `is malformed: ${b.length - off} bytes follow the END trailer`);

  // END: table crc, file length
  if (end!.version > SECTION_VERSIONS[SectionType.end]!) {
    fail('version', `END trailer version ${end!.version} is newer than this ferry understands (${SECTION_VERSIONS[SectionType.end]})`);
  }
  if (end!.length !== END_PAYLOAD_SIZE) fail('malformed', `is malformed: END trailer has ${end!.length} bytes, not ${END_PAYLOAD_SIZE}`);
  const endPayload = b.subarray(end!.payloadOffset, end!.payloadOffset + END_PAYLOAD_SIZE);
  if (crc32(endPayload) !== end!.crc) fail('checksum', 'checksum mismatch in the END trailer');
  let tableCrc = crc32(b.subarray(0, FILE_HEADER_SIZE));
  for (const h of headers) {
    const size = h === end ? 16 : SECTION_HEADER_SIZE;
    tableCrc = crc32(b.subarray(h.headerOffset, h.headerOffset + size), tableCrc);
  }
  if (tableCrc !== endPayload.readUInt32LE(8)) fail('checksum', 'checksum mismatch in the section table');
  const declared = endPayload.readBigUInt64LE(0);
  if (declared !== BigInt(b.length)) fail('malformed', `is malformed: END trailer says ${declared} bytes, the image has ${b.length}`);
  if ((flags & INCOMPAT_FLAGS_MASK & ~KNOWN_INCOMPAT_FLAGS) !== 0) {
    fail('version', `uses format features 0x${(flags & INCOMPAT_FLAGS_MASK).toString(16)} that this ferry does not understand`);
  }

  // sections
  const payloads = new Map<number, { h: SectionHeader; payload: Buffer }>();
  const extraSections: RawSection[] = [];
  const sections: SectionInfo[] = [];
  for (const h of headers) {
    const name = sectionName(h.type);
    const required = (h.flags & SECTION_FLAG_REQUIRED) !== 0;
    sections.push({ index: h.index, type: h.type, name, version: h.version, required, length: h.length });
    if (h === end) break;
    const payload = b.subarray(h.payloadOffset, h.payloadOffset + h.length);
    const known = SECTION_VERSIONS[h.type];
    if (known === undefined || h.type === SectionType.end) {
      if (required) fail('unknown-section', `has a required section of unknown type ${h.type} (section ${h.index}) that this ferry cannot handle`);
      if (crc32(payload) !== h.crc) fail('checksum', `checksum mismatch in section ${h.index} (${name})`);
      extraSections.push({ type: h.type, version: h.version, required, payload });
      continue;
    }
    if (h.version > known) fail('version', `section ${h.index} (${name}) version ${h.version} is newer than this ferry understands (${known})`);
    if (h.version < 1) fail('version', `section ${h.index} (${name}) version ${h.version} is not supported`);
    if (payloads.has(h.type)) fail('malformed', `is malformed: section ${name} appears twice (sections ${payloads.get(h.type)!.h.index} and ${h.index})`);
    if (crc32(payload) !== h.crc) fail('checksum', `checksum mismatch in section ${h.index} (${name})`);
    payloads.set(h.type, { h, payload });
  }
  const get = (name: 'meta' | 'module' | 'memory' | 'execution' | 'wasi') => {
    const s = payloads.get(SectionType[name]);
    return s ?? fail('missing-section', `has no ${name} section`);
  };
  const where = (h: SectionHeader) => `${p} section ${h.index} (${sectionName(h.type)})`;
  const malformed = (h: SectionHeader, why: string): never => {
    throw new ImageError('malformed', `${where(h)} is malformed: ${why}`);
  };
  const parseJson = (h: SectionHeader, bytes: Uint8Array): unknown => {
    try { return JSON.parse(asBuffer(bytes).toString('utf8')); } catch (e) { return malformed(h, `bad JSON (${(e as Error).message})`); }
  };
  const splitJsonBlob = (h: SectionHeader, payload: Buffer): [unknown, Buffer] => {
    if (payload.length < 4) malformed(h, 'no JSON header length');
    const n = payload.readUInt32LE(0);
    if (n > payload.length - 4) malformed(h, `JSON header of ${n} bytes in a ${payload.length}-byte payload`);
    return [parseJson(h, payload.subarray(4, 4 + n)), payload.subarray(4 + n)];
  };

  // meta
  const ms = get('meta');
  const metaRaw = parseJson(ms.h, ms.payload);
  if (!isPlainObject(metaRaw)) malformed(ms.h, 'not an object');
  const mr = metaRaw as Record<string, unknown>;
  for (const k of ['pid', 'program', 'createdAt', 'node', 'reason', 'ferryVersion'] as const) {
    if (typeof mr[k] !== 'string') malformed(ms.h, `${k} is not a string`);
  }
  if (!isValidPageSize(mr.pageSize)) malformed(ms.h, `page size ${String(mr.pageSize)} is not one of ${PAGE_SIZES.join(', ')}`);
  if (!isPlainObject(mr.extra)) malformed(ms.h, 'extra is not an object');
  const meta = mr as unknown as ImageMeta;

  // module
  const mods = get('module');
  const [modRaw, modBlob] = splitJsonBlob(mods.h, mods.payload);
  if (!isPlainObject(modRaw)) malformed(mods.h, 'header is not an object');
  const mh = modRaw as Record<string, unknown>;
  if (typeof mh.sha256 !== 'string' || !SHA256_RE.test(mh.sha256)) malformed(mods.h, 'sha256 is not 64 hex digits');
  if (typeof mh.embedded !== 'boolean') malformed(mods.h, 'embedded is not a boolean');
  if (!(mh.size === null || (Number.isInteger(mh.size) && (mh.size as number) >= 0))) malformed(mods.h, 'size is not a byte count');
  if (!(mh.path === null || typeof mh.path === 'string')) malformed(mods.h, 'path is not a string');
  if (mh.embedded) {
    if (modBlob.length !== mh.size) malformed(mods.h, `${modBlob.length} module bytes, the header says ${String(mh.size)}`);
    if (sha256Hex(modBlob) !== mh.sha256) fail('checksum', `checksum mismatch in section ${mods.h.index} (module): the module bytes do not match their sha256`);
  } else if (modBlob.length !== 0) {
    malformed(mods.h, `${modBlob.length} module bytes present but not flagged embedded`);
  }
  const module: ModuleInfo = {
    sha256: mh.sha256 as string, size: mh.size as number | null, path: mh.path as string | null,
    embedded: mh.embedded as boolean, bytes: mh.embedded ? modBlob : null,
  };

  // execution
  const exs = get('execution');
  const [exRaw, asyncify] = splitJsonBlob(exs.h, exs.payload);
  if (!isPlainObject(exRaw)) malformed(exs.h, 'header is not an object');
  const er = exRaw as Record<string, unknown>;
  if (!Array.isArray(er.globals)) malformed(exs.h, 'globals is not an array');
  for (const g of er.globals as unknown[]) { const why = checkGlobal(g); if (why) malformed(exs.h, `global ${why}`); }
  const addr = er.asyncifyDataAddr;
  if (!(typeof addr === 'number' && Number.isInteger(addr) && addr >= 0 && addr < 2 ** 32)) malformed(exs.h, 'asyncifyDataAddr is not a u32');
  if (!isPlainObject(er.extra)) malformed(exs.h, 'extra is not an object');
  const execution: ExecutionState = {
    globals: er.globals as ExecutionState['globals'], asyncify, asyncifyDataAddr: addr as number,
    extra: er.extra as Record<string, Json>,
  };

  // wasi
  const ws = get('wasi');
  const wasi = parseJson(ws.h, ws.payload);
  if (!isPlainObject(wasi)) malformed(ws.h, 'not an object');

  // memory
  const mems = get('memory');
  const memory = decodeMemory(mems.payload, where(mems.h));
  if (memory.pageSize !== meta.pageSize) malformed(mems.h, `page size ${memory.pageSize} differs from the meta page size ${meta.pageSize}`);

  return {
    formatVersion: version, meta, module, memory, execution, wasi: wasi as unknown as WasiState,
    extraSections, sections, totalBytes: b.length,
  };
}
