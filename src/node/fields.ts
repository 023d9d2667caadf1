// Reading fields of a JSON header that came over the wire: anything may be
// missing or of the wrong type, and the node must answer with a clear error
// (code 'bad-request') instead of crashing.
import { FerryError } from '../errors.ts';
import type { Header } from '../transport/index.ts';

const MAX_STRING = 64 * 1024;

export function badRequest(message: string): FerryError {
  return new FerryError('bad-request', message);
}

export function str(h: Header, key: string, what = 'request'): string {
  const v = h[key];
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_STRING) throw badRequest(`${what} needs '${key}' (a non-empty string)`);
  return v;
}

export function optStr(h: Header, key: string, what = 'request'): string | undefined {
  return h[key] === undefined || h[key] === null ? undefined : str(h, key, what);
}

export function strList(h: Header, key: string, what = 'request'): string[] {
  const v = h[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || v.length > 4096 || !v.every((x) => typeof x === 'string' && x.length <= MAX_STRING))
    throw badRequest(`${what}: '${key}' must be a list of strings`);
  return v as string[];
}

export function optBool(h: Header, key: string): boolean {
  return h[key] === true;
}

/** "HOST:PORT" (IPv6 as [::1]:PORT) -> parts. */
export function parseAddress(spec: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(spec) ?? /^([^:]+):(\d+)$/.exec(spec);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) throw new FerryError('bad-argument', `'${spec}' is not HOST:PORT`);
  return { host: m[1], port };
}

export function formatAddress(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}
