// The message-code table: every frame code the transport knows, in one place.
//
// Adding a message is one line in CODES below: a u16 code number (unique), its
// priority class by default, and whether its frames carry a JSON header and/or
// a binary body. The frame decoder refuses codes not in this table, and frames
// with a header or body the code does not allow.
//
// Number ranges (a convention, so that concurrent additions do not collide):
//   0x0001-0x000f  connection (handshake, errors, liveness)
//   0x0010-0x001f  generic RPC
//   0x0020-0x002f  bulk streams
//   0x0030-0x003f  pages (urgent)
//   0x0100-...     node / migration / ipc messages, added by their owners

/** Priority classes. An urgent frame is never queued behind a bulk frame. */
export type Priority = 'urgent' | 'bulk';

export interface CodeSpec {
  /** u16 wire number, unique. */
  readonly code: number;
  /** Default priority class (send options may override it per frame). */
  readonly priority: Priority;
  /** Frames of this code may carry a JSON header (an object). */
  readonly header: boolean;
  /** Frames of this code may carry a binary body. */
  readonly body: boolean;
}

export const CODES = {
  HELLO:        { code: 0x0001, priority: 'urgent', header: true, body: false }, // handshake, client -> server
  HELLO_ACK:    { code: 0x0002, priority: 'urgent', header: true, body: false }, // handshake, server -> client
  ERROR:        { code: 0x0003, priority: 'urgent', header: true, body: false }, // {code, message, re?}: refusal or failed request
  PING:         { code: 0x0004, priority: 'urgent', header: true, body: false }, // {id}; answered by PONG {re}
  PONG:         { code: 0x0005, priority: 'urgent', header: true, body: false },
  REQUEST:      { code: 0x0010, priority: 'bulk',   header: true, body: true  }, // JSON RPC: {id, method, ...}
  RESPONSE:     { code: 0x0011, priority: 'bulk',   header: true, body: true  }, // {re, ...}
  STREAM_DATA:  { code: 0x0020, priority: 'bulk',   header: true, body: true  }, // {stream, meta? (first frame)} + bytes
  STREAM_END:   { code: 0x0021, priority: 'bulk',   header: true, body: false }, // {stream, meta?, error?}
  PAGE_REQUEST: { code: 0x0030, priority: 'urgent', header: true, body: false }, // a page fault: {id, ...}
  PAGE_DATA:    { code: 0x0031, priority: 'urgent', header: true, body: true  }, // {re, ...} + page bytes
  PROC_OUTPUT:  { code: 0x0100, priority: 'bulk',   header: true, body: true  }, // node: {session, pid, fd} + a process's stdout/stderr bytes
  PROC_INPUT:   { code: 0x0101, priority: 'bulk',   header: true, body: true  }, // node: {session, eof?} + stdin bytes for a process
  PROC_EXIT:    { code: 0x0102, priority: 'bulk',   header: true, body: false }, // node: {session, pid, code, error?}: the process ended
  HEARTBEAT:    { code: 0x0103, priority: 'urgent', header: true, body: false }, // node: {node, addr, members, leaving?}: liveness + gossip
  // Home services (Sprite's home node): a process's stdio stays at its home node wherever it runs.
  HOME_OUTPUT:  { code: 0x0104, priority: 'bulk',   header: true, body: true  }, // running node -> home: {pid, seq, fd} + bytes (home reorders by seq)
  HOME_EXIT:    { code: 0x0105, priority: 'bulk',   header: true, body: false }, // running node -> home: {pid, seq, code, error?}: ended after seq outputs
  HOME_INPUT:   { code: 0x0106, priority: 'bulk',   header: true, body: true  }, // home -> running node: {pid, offset, eof?} + stdin bytes from that offset
  HOME_ATTACH:  { code: 0x0107, priority: 'bulk',   header: true, body: false }, // new running node -> home: {pid, node, stdinOffset}: send stdin here from that offset
  // A connection the peer dials to this node on request (src/node/dial-back.ts): the side that dials reads into one buffer (socket-input.ts).
  DIAL_BACK:    { code: 0x0108, priority: 'urgent', header: true, body: false }, // node: request {token}: dial me; answered once dialled
  DIALED_BACK:  { code: 0x0109, priority: 'urgent', header: true, body: false }, // node: {token}: the first frame on the connection dialled back
  // Migration (src/migration): one dedicated connection per migration, dialled by the destination (dial-back.ts) or else by the source.
  MIG_SETUP:    { code: 0x0120, priority: 'bulk',   header: true, body: true  }, // request {mid, pid, sha256, pageSize, algorithm} + module bytes if asked
  MIG_PAGES:    { code: 0x0121, priority: 'bulk',   header: true, body: true  }, // {mid} + a page batch (src/memory/page-batch.ts)
  // 0x0122: MIG_STATE until the state travelled with the commit (retired; not to be reused)
  MIG_COMMIT:   { code: 0x0123, priority: 'bulk',   header: true, body: true  }, // request {mid} + state image (pages elided): run it; answered once it runs (or ERROR: aborted)
  MIG_QUERY:    { code: 0x0124, priority: 'urgent', header: true, body: false }, // request {mid}: outcome {state}; aborts one still waiting for its commit
  MIG_ABORT:    { code: 0x0125, priority: 'urgent', header: true, body: false }, // {mid, reason}: drop it
  MIG_DONE:     { code: 0x0127, priority: 'bulk',   header: true, body: false }, // request {mid}: the source pushed every page (post-copy); answered with fault stats once all are here
  MIG_PROGRESS: { code: 0x0126, priority: 'bulk',   header: true, body: false }, // node -> client: {token, progress} while a migration runs
  MIG_RESUME:   { code: 0x0141, priority: 'urgent', header: true, body: false }, // request {mid} on a fresh connection (post-copy push after a broken link): answered with a bitmap of the pages still absent
  // Residual dependencies (src/node/page-server.ts): the node holding a process's pages serves them on any connection from the node running it.
  RESIDUAL_END: { code: 0x0140, priority: 'urgent', header: true, body: false }, // request {mid, pid, reason, stats?}: the dependency is over (the process ended, has every page, or moved on)
  // File servers (src/node/file-server.ts; flushing, freeze-free): a source flushes a process's pages to a node with the file-server role.
  PAGE_STORE:   { code: 0x0150, priority: 'bulk',   header: true, body: true  }, // request {mid, pid, runner, pageSize, seal?: pages, drop?: reason} + a page batch: stored (answered once applied)
  PAGE_STORE_ENDED: { code: 0x0151, priority: 'bulk', header: true, body: false }, // file server -> source: {mid, pid, reason, stats?}: the store is dropped (the record closes)
  MIG_HANDOVER: { code: 0x0152, priority: 'urgent', header: true, body: false }, // request {mid, holder}: freeze-free, every page flushed: fault to holder (the file server) from now on; {handedOver}
  // Remote files (Sprite's home-node file policy, src/wasi/file-ops.ts): the running node asks the home node to do each file-system call.
  FILE_OP:      { code: 0x0110, priority: 'urgent', header: true, body: true  }, // request {pid, op, args...} (encodeFileOp) + write data: the guest blocks until answered
  FILE_REPLY:   { code: 0x0111, priority: 'urgent', header: true, body: true  }, // {re, ok, n?|stat?|entries?|code+message} (encodeFileReply) + read/readlink bytes
} as const satisfies Record<string, CodeSpec>;

export type CodeName = keyof typeof CODES;

/** Code numbers by name: `Code.REQUEST === 0x0010`. */
export const Code = Object.fromEntries(Object.entries(CODES).map(([n, s]) => [n, s.code])) as { readonly [K in CodeName]: (typeof CODES)[K]['code'] };

export interface CodeInfo extends CodeSpec { readonly name: CodeName }

const byNumber = new Map<number, CodeInfo>();
for (const [name, spec] of Object.entries(CODES) as [CodeName, CodeSpec][]) {
  if (!Number.isInteger(spec.code) || spec.code <= 0 || spec.code > 0xffff) throw new Error(`transport code table: ${name} has an invalid number ${spec.code}`);
  const clash = byNumber.get(spec.code);
  if (clash) throw new Error(`transport code table: ${name} and ${clash.name} share number 0x${spec.code.toString(16)}`);
  byNumber.set(spec.code, Object.freeze({ name, ...spec }));
}

/** The table entry for a wire number, or undefined when the code is unknown. */
export function codeInfo(code: number): CodeInfo | undefined {
  return byNumber.get(code);
}

/** Resolve a code given by name or number; throws on an unknown one. */
export function resolveCode(code: CodeName | number): CodeInfo {
  const info = typeof code === 'number' ? byNumber.get(code) : (Object.hasOwn(CODES, code) ? byNumber.get(CODES[code].code) : undefined);
  if (!info) throw new TypeError(`unknown transport message code ${typeof code === 'number' ? '0x' + code.toString(16) : code}`);
  return info;
}

export function codeName(code: number): string {
  return byNumber.get(code)?.name ?? `0x${code.toString(16).padStart(4, '0')}`;
}
