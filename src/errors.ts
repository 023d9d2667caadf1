// One error type for everything a user can be told about. It survives crossing a
// thread or the network: a stable name, a machine-readable code, a message, a cause.

export type ErrorCode =
  | 'invalid-module' | 'not-wasi-command' | 'unsupported-module' | 'transform-failed'
  | 'not-found' | 'bad-image' | 'bad-argument' | 'io' | 'runtime' | 'trap' | 'internal';

export class FerryError extends Error {
  override readonly name = 'FerryError';
  constructor(readonly code: ErrorCode | string, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export interface SerializedError { name: string; code: string; message: string; stack?: string; cause?: SerializedError }

export function serializeError(e: unknown): SerializedError {
  if (e instanceof FerryError) return { name: e.name, code: e.code, message: e.message, stack: e.stack, cause: e.cause === undefined ? undefined : serializeError(e.cause) };
  if (e instanceof WebAssembly.RuntimeError) return { name: 'FerryError', code: 'trap', message: `wasm trap: ${e.message}`, stack: e.stack };
  if (e instanceof Error) return { name: e.name, code: (e as any).code ?? 'internal', message: e.message, stack: e.stack };
  const message = (e as { message?: unknown } | null)?.message; // binaryen throws plain objects
  return { name: 'Error', code: 'internal', message: typeof message === 'string' ? message : String(e) };
}

export function deserializeError(s: SerializedError): FerryError {
  const err = new FerryError(s.code, s.message, s.cause ? { cause: deserializeError(s.cause) } : undefined);
  if (s.stack) err.stack = s.stack;
  return err;
}
