// Global values as exact, JSON-safe strings: integers in decimal, floats by their bits.
import type { ValType } from './module-meta.ts';

const f32 = new Float32Array(1), f32bits = new Uint32Array(f32.buffer);
const f64 = new Float64Array(1), f64bits = new BigUint64Array(f64.buffer);

export function encodeGlobal(type: ValType, value: unknown): string {
  switch (type) {
    case 'i32': return String((value as number) | 0);
    case 'i64': return BigInt.asIntN(64, value as bigint).toString();
    case 'f32': f32[0] = value as number; return '0x' + f32bits[0].toString(16);
    case 'f64': f64[0] = value as number; return '0x' + f64bits[0].toString(16);
  }
}

export function decodeGlobal(type: ValType, s: string): number | bigint {
  switch (type) {
    case 'i32': return Number(s) | 0;
    case 'i64': return BigInt(s);
    case 'f32': f32bits[0] = Number(s); return f32[0];
    case 'f64': f64bits[0] = BigInt(s); return f64[0];
  }
}
