// Wasm global values as exact strings: decimal integers, float bit patterns in hex.

import type { GlobalType, GlobalValue } from './types.ts';

const INT_RE = /^-?(0|[1-9][0-9]*)$/;
const F32_RE = /^0x[0-9a-f]{8}$/;
const F64_RE = /^0x[0-9a-f]{16}$/;
const RANGES: Record<'i32' | 'i64', [bigint, bigint]> = {
  i32: [-(2n ** 31n), 2n ** 32n - 1n],
  i64: [-(2n ** 63n), 2n ** 64n - 1n],
};

/** Why a global is not valid, or null if it is. */
export function checkGlobal(g: unknown): string | null {
  if (typeof g !== 'object' || g === null) return 'not an object';
  const { name, type, value } = g as Record<string, unknown>;
  if (typeof name !== 'string') return 'name is not a string';
  if (typeof value !== 'string') return `${name}: value is not a string`;
  switch (type) {
    case 'i32': case 'i64': {
      if (!INT_RE.test(value)) return `${name}: ${type} value "${value}" is not a decimal integer`;
      const v = BigInt(value);
      const [lo, hi] = RANGES[type];
      return v < lo || v > hi ? `${name}: ${type} value ${value} is out of range` : null;
    }
    case 'f32': return F32_RE.test(value) ? null : `${name}: f32 value "${value}" is not 0x + 8 hex digits`;
    case 'f64': return F64_RE.test(value) ? null : `${name}: f64 value "${value}" is not 0x + 16 hex digits`;
    default: return `${name}: unknown type ${String(type)}`;
  }
}

/** The exact string for a value: i32 from a number, i64 from a bigint, floats from a
 *  number (its bits, as V8 holds them) or from their raw bits (number for f32, bigint for f64). */
export function globalValueToString(type: GlobalType, v: number | bigint, opts: { bits?: boolean } = {}): string {
  switch (type) {
    case 'i32': return String(typeof v === 'bigint' ? BigInt.asIntN(32, v) : v | 0);
    case 'i64': return BigInt.asIntN(64, BigInt(v)).toString();
    case 'f32': {
      let bits: number;
      if (opts.bits) bits = Number(v) >>> 0;
      else { const dv = new DataView(new ArrayBuffer(4)); dv.setFloat32(0, Number(v), true); bits = dv.getUint32(0, true); }
      return '0x' + bits.toString(16).padStart(8, '0');
    }
    case 'f64': {
      let bits: bigint;
      if (opts.bits) bits = BigInt.asUintN(64, BigInt(v));
      else { const dv = new DataView(new ArrayBuffer(8)); dv.setFloat64(0, Number(v), true); bits = dv.getBigUint64(0, true); }
      return '0x' + bits.toString(16).padStart(16, '0');
    }
  }
}

/** The value as the JS API wants it: number for i32/f32/f64, bigint for i64. */
export function parseGlobalValue(g: GlobalValue): number | bigint {
  switch (g.type) {
    case 'i32': return Number(BigInt.asIntN(32, BigInt(g.value)));
    case 'i64': return BigInt.asIntN(64, BigInt(g.value));
    case 'f32': { const dv = new DataView(new ArrayBuffer(4)); dv.setUint32(0, Number.parseInt(g.value.slice(2), 16), true); return dv.getFloat32(0, true); }
    case 'f64': { const dv = new DataView(new ArrayBuffer(8)); dv.setBigUint64(0, BigInt(g.value), true); return dv.getFloat64(0, true); }
  }
}

/** The raw bits of a value (NaN payloads intact): i32/f32 as an unsigned number, i64/f64 as an unsigned bigint. */
export function globalBits(g: GlobalValue): number | bigint {
  switch (g.type) {
    case 'i32': return Number(BigInt.asUintN(32, BigInt(g.value)));
    case 'i64': return BigInt.asUintN(64, BigInt(g.value));
    case 'f32': return Number.parseInt(g.value.slice(2), 16) >>> 0;
    case 'f64': return BigInt(g.value);
  }
}
