// Summarizes a wasm module: imports, exports, memory limits, and which
// post-MVP features its code actually uses (found by decoding every function
// body; a function that uses an opcode family this scanner does not decode
// fully -- SIMD, atomics, GC, exceptions -- is counted and then skipped).
// Usage: node inspect-wasm.mjs file.wasm [...]
import fs from 'node:fs';

export function inspectWasm(bytes) {
  let p = 0;
  const u8 = () => bytes[p++];
  const uleb = () => { let r = 0n, s = 0n, b; do { b = bytes[p++]; r |= BigInt(b & 0x7f) << s; s += 7n; } while (b & 0x80); return Number(r); };
  const sleb = () => { let b; do { b = bytes[p++]; } while (b & 0x80); };
  const name = () => { const n = uleb(); const s = Buffer.from(bytes.subarray(p, p + n)).toString('utf8'); p += n; return s; };
  const limits = () => { const f = u8(); const min = uleb(); const max = (f & 1) ? uleb() : null; return { min, max, shared: !!(f & 2), memory64: !!(f & 4) }; };
  const out = { size: bytes.length, imports: [], exports: [], memories: [], features: {}, counts: {}, sections: [], customSections: [] };
  const feat = (f) => { out.features[f] = (out.features[f] ?? 0) + 1; };
  const count = (c) => { out.counts[c] = (out.counts[c] ?? 0) + 1; };
  if (bytes[0] !== 0 || bytes[1] !== 0x61) throw new Error('not wasm');
  p = 8;
  let numTypes = 0;
  while (p < bytes.length) {
    const id = u8(); const len = uleb(); const end = p + len;
    out.sections.push(id);
    if (id === 0) { out.customSections.push(name()); }
    else if (id === 1) {
      numTypes = uleb();
      for (let i = 0; i < numTypes; i++) {
        const form = u8();
        if (form !== 0x60) { feat('GC types'); break; }
        const np = uleb(); for (let j = 0; j < np; j++) { const t = u8(); if (t === 0x7b) feat('SIMD128 (v128 type)'); }
        const nr = uleb(); for (let j = 0; j < nr; j++) { const t = u8(); if (t === 0x7b) feat('SIMD128 (v128 type)'); }
        if (nr > 1) feat('Multivalue');
      }
    } else if (id === 2) {
      const n = uleb();
      for (let i = 0; i < n; i++) {
        const module = name(), field = name(), kind = u8();
        let desc;
        if (kind === 0) desc = { kind: 'func', type: uleb() };
        else if (kind === 1) { u8(); desc = { kind: 'table', ...limits() }; }
        else if (kind === 2) { desc = { kind: 'memory', ...limits() }; out.memories.push({ imported: `${module}.${field}`, ...desc }); }
        else if (kind === 3) { const t = u8(); const mut = u8(); desc = { kind: 'global', type: t, mutable: !!mut }; if (mut) feat('MutableGlobals (import)'); }
        else if (kind === 4) { u8(); uleb(); desc = { kind: 'tag' }; feat('ExceptionHandling (tag import)'); }
        out.imports.push({ module, name: field, ...desc });
      }
    } else if (id === 5) {
      const n = uleb(); for (let i = 0; i < n; i++) out.memories.push(limits());
      if (n > 1) feat('MultiMemory');
    } else if (id === 7) {
      const n = uleb();
      for (let i = 0; i < n; i++) { const nm = name(); const kind = u8(); uleb(); out.exports.push({ name: nm, kind: ['func', 'table', 'memory', 'global', 'tag'][kind] }); }
    } else if (id === 12) { feat('BulkMemory (datacount section)'); }
    else if (id === 13) { feat('ExceptionHandling (tag section)'); }
    else if (id === 11) {
      const n = uleb(); out.counts.dataSegments = n;
      for (let i = 0; i < n; i++) {
        const f = uleb();
        if (f === 1) { feat('BulkMemory (passive data)'); }
        else { if (f === 2) uleb(); // memidx
          // init expr
          while (bytes[p] !== 0x0b) { const op = u8(); if (op === 0x41 || op === 0x42) sleb(); else if (op === 0x23) uleb(); else if (op === 0x6a || op === 0x6b || op === 0x6c || op === 0x7c || op === 0x7d || op === 0x7e) feat('ExtendedConst'); else throw new Error('data init op ' + op); }
          p++; }
        const sz = uleb(); p += sz;
      }
    } else if (id === 10) {
      const n = uleb(); out.counts.functions = n;
      for (let fi = 0; fi < n; fi++) {
        const bodyLen = uleb(); const bodyEnd = p + bodyLen;
        const nl = uleb(); for (let j = 0; j < nl; j++) { uleb(); const t = u8(); if (t === 0x7b) feat('SIMD128 (v128 local)'); }
        try { scanBody(bodyEnd); } catch (e) { if (e !== SKIP) throw e; }
        p = bodyEnd;
      }
    }
    p = end;
  }
  return out;

  function blocktype() {
    const b = bytes[p];
    if (b === 0x40 || (b >= 0x6f && b <= 0x7f) || b === 0x70) { p++; if (b === 0x7b) feat('SIMD128'); return; }
    feat('Multivalue (typed block)'); sleb();
  }
  function scanBody(end) {
    while (p < end) {
      const op = u8();
      switch (true) {
        case op <= 0x01 || op === 0x05 || op === 0x0b || op === 0x0f || op === 0x1a || op === 0x1b: break;
        case op >= 0x02 && op <= 0x04: blocktype(); break;
        case op === 0x06 || op === 0x07 || op === 0x08 || op === 0x09 || op === 0x0a || op === 0x18 || op === 0x19 || op === 0x1f: feat('ExceptionHandling'); throw SKIP;
        case op === 0x0c || op === 0x0d: uleb(); break;
        case op === 0x0e: { const k = uleb(); for (let i = 0; i <= k; i++) uleb(); break; }
        case op === 0x10: uleb(); count('call'); break;
        case op === 0x11: { uleb(); const s = p; const t = uleb(); if (t !== 0 || p - s > 1) feat('ReferenceTypes/CallIndirectOverlong (table index)'); count('call_indirect'); break; }
        case op === 0x12 || op === 0x13: feat('TailCall'); if (op === 0x12) uleb(); else { uleb(); uleb(); } break;
        case op === 0x14 || op === 0x15: feat('GC/typed function references'); throw SKIP;
        case op === 0x1c: { feat('ReferenceTypes (typed select)'); const k = uleb(); p += k; break; }
        case op >= 0x20 && op <= 0x24: uleb(); break;
        case op === 0x25 || op === 0x26: feat('ReferenceTypes (table.get/set)'); uleb(); break;
        case op >= 0x28 && op <= 0x3e: { const a = uleb(); if (a & 0x40) { feat('MultiMemory'); uleb(); } uleb(); count('load/store'); break; }
        case op === 0x3f: uleb(); count('memory.size'); break;
        case op === 0x40: uleb(); count('memory.grow'); break;
        case op === 0x41 || op === 0x42: sleb(); break;
        case op === 0x43: p += 4; break;
        case op === 0x44: p += 8; break;
        case op >= 0x45 && op <= 0xbf: break;
        case op >= 0xc0 && op <= 0xc4: feat('SignExt'); break;
        case op === 0xd0: feat('ReferenceTypes'); sleb(); break;
        case op === 0xd1: feat('ReferenceTypes'); break;
        case op === 0xd2: feat('ReferenceTypes'); uleb(); break;
        case op === 0xfc: {
          const sub = uleb();
          if (sub <= 7) feat('NontrappingFPToInt');
          else if (sub === 8) { feat('BulkMemory (memory.init)'); uleb(); uleb(); }
          else if (sub === 9) { feat('BulkMemory (data.drop)'); uleb(); }
          else if (sub === 10) { feat('BulkMemory (memory.copy)'); uleb(); uleb(); }
          else if (sub === 11) { feat('BulkMemory (memory.fill)'); uleb(); }
          else if (sub === 12 || sub === 14) { feat('BulkMemory/ReferenceTypes (table.init/copy)'); uleb(); uleb(); }
          else if (sub === 13) { feat('BulkMemory (elem.drop)'); uleb(); }
          else if (sub >= 15 && sub <= 17) { feat('ReferenceTypes (table.grow/size/fill)'); uleb(); }
          else { feat('0xFC sub ' + sub); throw SKIP; }
          break;
        }
        case op === 0xfd: feat('SIMD128 (functions)'); throw SKIP;
        case op === 0xfe: feat('Atomics (functions)'); throw SKIP;
        case op === 0xfb: feat('GC (functions)'); throw SKIP;
        default: feat('unknown opcode 0x' + op.toString(16)); throw SKIP;
      }
    }
  }
}
const SKIP = Symbol('skip');

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const f of process.argv.slice(2)) {
    const r = inspectWasm(fs.readFileSync(f));
    const byModule = {};
    for (const i of r.imports) (byModule[i.module] ??= []).push(i.kind === 'func' ? i.name : `${i.name}(${i.kind})`);
    console.log(JSON.stringify({ file: f, size: r.size, importsByModule: byModule, exports: r.exports.map((e) => `${e.name}:${e.kind}`), memories: r.memories, features: r.features, counts: r.counts, customSections: r.customSections }, null, 1));
  }
}
