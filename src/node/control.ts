// The control API: what the CLI (and other nodes) ask a node, as JSON REQUEST
// frames {id, method, ...} answered by RESPONSE {re, ...} or ERROR {re, code,
// message}. Any node answers for the whole cluster: it asks the others, or
// forwards the request to the node concerned and relays the answer.
//
//   join   {name, addr}                       -> {members}             (nodes only)
//   nodes  {}                                 -> {members}
//   ps     {scope?: 'cluster'|'local'}        -> {processes, unreachable}
//   run    {node?, program, args, env, dirs, argv0?, session, sha256} + module bytes
//                                             -> {pid, node}; then PROC_OUTPUT / PROC_EXIT frames (stdio.ts)
//   kill   {pid, scope?}                      -> {pid, node}
//   status {}                                 -> {name, addr, processes}
//   locate {pid, scope?}                      -> {pid, node, addr}    (who runs it now); with scope 'local':
//                                                {pid, node?, ended?, asHome?} (runs here, or how it ended as this node knows)
//   migrate {pid, to, algorithm?, variant?, fileServer?, progress?, maxRounds?, downtimeLimitMs?, thesisLimits?, autoConverge?, postcopyAfterRounds?, compress?}
//                                             -> {metrics}; MIG_PROGRESS {token, progress} frames meanwhile
//                                                (only on the node running pid: the CLI locates it first)
//   migrate-cancel {pid}                      -> {id}                 (node running pid)
//   migrations {scope?}                       -> {migrations, unreachable}
//   checkpoint {pid}                          -> {bytes}; the image follows as a stream {kind: 'image', token}
//                                                (node running pid)
//   restore {session, upload, name?}          -> {pid, node}; stdio as for run (the image came first as an
//                                                upload stream {kind: 'upload', upload})
//   node-stop {name?, force?}                 -> {node, stopping, dependents} (the named node answers, then stops);
//                                                ERROR has-dependents while processes elsewhere need its pages, unless force
import { FerryError } from '../errors.ts';
import type { Connection, Message, Reply } from '../transport/index.ts';
import { sha256 } from '../vm/module-meta.ts';
import { badRequest, optStr, str, strList } from './fields.ts';
import { DROP_AFTER_MS, type Membership } from './membership.ts';
import type { ProcessInfo, ProcessTable } from './process-table.ts';
import type { ProgramStore } from './programs.ts';
import type { StdioRouter } from './stdio.ts';
import type { HomeRouter } from './home.ts';
import type { HomeFiles } from './home-files.ts';
import { parseDir } from './process-table.ts';
import type { Migrator } from './migrator.ts';
import { CODECS, isCodec } from '../memory/page-codec.ts';
import type { Uploads } from './uploads.ts';
import type { MigrationMetrics } from '../migration/index.ts';
import { decodeImage } from '../image/index.ts';
import { programOfImage } from '../vm/snapshot.ts';
import type { FilePolicy } from './process-table.ts';
import type { Dependent } from './page-server.ts';

/** "b/1 (on b), c/2 (on c)" */
export function describeDependents(ds: Dependent[]): string {
  return ds.map((d) => `${d.pid} (on ${d.node})`).join(', ');
}

export const RUN_TIMEOUT_MS = 15 * 60_000; // a large module's first preparation takes minutes
const PEER_QUERY_TIMEOUT_MS = 5_000;

export interface ControlContext {
  name: string;
  addr: string;
  membership: Membership;
  table: ProcessTable;
  stdio: StdioRouter;
  programs: ProgramStore;
  home: HomeRouter;
  homeFiles: HomeFiles;
  migrator: Migrator;
  uploads: Uploads;
  /** Stop this node (after the answer has gone out). */
  requestStop?: (why: string) => void;
}

export type Method = 'join' | 'nodes' | 'ps' | 'run' | 'kill' | 'status' | 'locate' | 'migrate' | 'migrate-cancel' | 'migrations' | 'checkpoint' | 'restore' | 'node-stop';
const METHODS = 'join, nodes, status, ps, run, kill, locate, migrate, migrate-cancel, migrations, checkpoint, restore, node-stop';

export class ControlApi {
  constructor(private readonly ctx: ControlContext) {}

  /** The REQUEST handler for every connection (clients and peers). */
  handle = async (msg: Message, conn: Connection): Promise<Reply> => {
    const method = str(msg.header, 'method', 'a control request');
    switch (method) {
      case 'join':
        if (conn.peer.role !== 'node') throw new FerryError('refused', 'only nodes may join');
        return { header: { ...this.ctx.membership.onJoin(msg, conn) } };
      case 'nodes':
        return { header: { members: this.ctx.membership.list() } };
      case 'status':
        return { header: { name: this.ctx.name, addr: this.ctx.addr, processes: this.ctx.table.size } };
      case 'ps':
        return { header: { ...(await this.ps(msg.header.scope === 'local')) } };
      case 'run':
        return { header: { ...(await this.run(msg, conn)) } };
      case 'kill':
        return { header: { ...(await this.kill(str(msg.header, 'pid', 'kill'), msg.header.scope === 'local')) } };
      case 'locate': {
        const pid = str(msg.header, 'pid', 'locate');
        return { header: msg.header.scope === 'local' ? { ...this.knownHere(pid) } : { ...(await this.locate(pid)) } };
      }
      case 'migrate':
        return { header: { metrics: await this.migrate(msg, conn) } as never };
      case 'migrate-cancel':
        return { header: this.ctx.migrator.cancel(str(msg.header, 'pid', 'migrate-cancel')) };
      case 'migrations':
        return { header: { ...(await this.migrations(msg.header.scope === 'local')) } as never };
      case 'checkpoint':
        return { header: await this.checkpoint(msg, conn) };
      case 'restore':
        return { header: { ...(await this.restore(msg, conn)) } };
      case 'node-stop':
        return { header: { ...(await this.nodeStop(msg)) } as never };
      default:
        throw badRequest(`unknown method '${method}' (known: ${METHODS})`);
    }
  };

  /** This node's items plus every member's (asked with scope 'local'); who did not answer.
   *  A member marked down within DROP_AFTER_MS is asked too (it may only have been slow);
   *  one down longer is named at once, not waited for. */
  private async gather<T>(method: string, key: string, own: T[], localOnly: boolean): Promise<{ items: T[]; unreachable: { node: string; error: string }[] }> {
    const items = [...own];
    const unreachable: { node: string; error: string }[] = [];
    if (localOnly) return { items, unreachable };
    const members = this.ctx.membership.list().filter((m) => !m.self && m.state !== 'left');
    const answers = await Promise.all(members.map(async (m) => {
      if (m.state === 'down' && m.lastSeenMsAgo >= DROP_AFTER_MS) {
        unreachable.push({ node: m.name, error: `down (silent for ${Math.round(m.lastSeenMsAgo / 1000)} s)` });
        return [];
      }
      try {
        const list = (await this.askMember(m.name, { method, scope: 'local' }))[key];
        return Array.isArray(list) ? (list as unknown as T[]) : [];
      } catch (e) {
        unreachable.push({ node: m.name, error: (e as Error).message });
        return [];
      }
    }));
    for (const a of answers) items.push(...a);
    return { items, unreachable };
  }

  private async ps(localOnly: boolean): Promise<{ processes: ProcessInfo[]; unreachable: { node: string; error: string }[] }> {
    const { items: processes, unreachable } = await this.gather<ProcessInfo>('ps', 'processes', this.ctx.table.list(), localOnly);
    processes.sort((a, b) => a.startedAt.localeCompare(b.startedAt) || a.pid.localeCompare(b.pid));
    return { processes, unreachable };
  }

  private async run(msg: Message, conn: Connection): Promise<{ pid: string; node: string }> {
    const h = msg.header;
    const session = str(h, 'session', 'run');
    if (session.length > 128) throw badRequest('run: session id too long');
    const target = optStr(h, 'node', 'run') ?? this.ctx.name;
    const path = str(h, 'program', 'run');
    const args = strList(h, 'args', 'run');
    const env = strList(h, 'env', 'run');
    const dirs = strList(h, 'dirs', 'run');
    const argv0 = optStr(h, 'argv0', 'run');
    const hash = str(h, 'sha256', 'run');
    if (!/^[0-9a-f]{64}$/.test(hash)) throw badRequest('run: sha256 must be 64 lowercase hex digits');

    if (target !== this.ctx.name) {
      const peer = await this.ctx.membership.peer(target);
      this.ctx.stdio.addRelay(session, conn, peer);
      try {
        const { id: _id, ...fwd } = h;
        void _id;
        const r = await peer.request('REQUEST', fwd, msg.body, { timeoutMs: RUN_TIMEOUT_MS });
        return { pid: String(r.header.pid), node: String(r.header.node) };
      } catch (e) {
        this.ctx.stdio.dropRelay(session);
        throw e;
      }
    }

    const files = optStr(h, 'files', 'run') ?? 'reopen';
    if (files !== 'reopen' && files !== 'home') throw badRequest(`run: files must be 'reopen' or 'home', not '${files}'`);
    let bytes: Uint8Array = msg.body;
    if (bytes.length === 0) {
      const cached = this.ctx.programs.get(hash);
      if (!cached) throw new FerryError('need-module', `node ${this.ctx.name} does not have module ${hash.slice(0, 12)}...: send its bytes`);
      bytes = cached;
    } else {
      if (sha256(bytes) !== hash) throw badRequest('run: the module bytes do not match their sha256');
      this.ctx.programs.put(hash, bytes);
    }
    const pid = this.ctx.table.allocatePid();
    this.ctx.home.open(pid, this.ctx.stdio.sinkFor(conn, session, pid));
    if (files === 'home') this.ctx.homeFiles.open(pid, dirs.map((d) => parseDir(d).host));
    try {
      await this.ctx.table.start({
        pid, program: { path, bytes, hash }, args, env, dirs, argv0, files: files as FilePolicy,
        sink: this.ctx.home.routeFor(pid, this.ctx.name),
      });
    } catch (e) {
      this.ctx.home.close(pid);
      this.ctx.homeFiles.close(pid);
      throw e;
    }
    this.ctx.stdio.bindLocal(conn, session, pid);
    return { pid, node: this.ctx.name };
  }

  /** What this node knows of pid: it runs it here, or how it ended (the home saw it end
   *  wherever it ran last, "ended on c (exit code 0)"; the table knows what ended here). */
  private knownHere(pid: string): { pid: string; node?: string; ended?: string; asHome?: boolean } {
    if (this.ctx.table.get(pid)) return { pid, node: this.ctx.name };
    const asHome = this.ctx.home.howEnded(pid);
    if (asHome) return { pid, ended: asHome, asHome: true };
    const here = this.ctx.table.ended(pid);
    return here ? { pid, ended: here } : { pid };
  }

  /** Which node runs pid now: this one, or the member that says it does. Members marked
   *  down are asked too (within the same bound): under load a live node's heartbeats can be
   *  late for DOWN_AFTER_MS, and "no such process" must not be said for a process that runs.
   *  If none does, the error says how it ended (its home's word first) and names every
   *  member that could not be asked. */
  private async locate(pid: string): Promise<{ pid: string; node: string; addr: string }> {
    const here = this.knownHere(pid);
    if (here.node) return { pid, node: here.node, addr: this.ctx.addr };
    const heard = [here];
    // The first member that has it answers the lookup: a dead host among the members costs
    // a lookup that fails PEER_QUERY_TIMEOUT_MS, not every lookup.
    const { value: node, failed } = await this.firstMember({ method: 'locate', pid, scope: 'local' }, (r, m) => {
      if (r.node === m) return m;
      heard.push(r as typeof here);
      throw new FerryError('no-such-process', `not on ${m}`);
    });
    if (node) return { pid, node, addr: this.ctx.membership.list().find((m) => m.name === node)!.addr };
    throw notFound(pid, (heard.find((h) => h.asHome) ?? heard.find((h) => h.ended))?.ended, failed);
  }

  /** Every member (those marked down too) asked at once: the first answer `accept` takes (it
   *  throws to refuse one) is the value; `failed` has the other members' errors, as they came. */
  private async firstMember<T>(header: Record<string, unknown>, accept: (answer: Message['header'], node: string) => T): Promise<{ value: T | undefined; failed: { node: string; error: Error }[] }> {
    const failed: { node: string; error: Error }[] = [];
    const value = await Promise.any(this.ctx.membership.unleftMembers().map(async (node) => {
      try { return accept(await this.askMember(node, header), node); } catch (e) { failed.push({ node, error: e as Error }); throw e; }
    })).catch(() => undefined);
    return { value, failed };
  }

  /** One request to a member, even one marked down (it may be only slow), all within
   *  PEER_QUERY_TIMEOUT_MS: dialling a stalled node waits on its handshake. */
  private async askMember(node: string, header: Record<string, unknown>): Promise<Message['header']> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new FerryError('timeout', `no answer within ${PEER_QUERY_TIMEOUT_MS} ms`)), PEER_QUERY_TIMEOUT_MS); });
    const asked = this.ctx.membership.peer(node, { evenIfDown: true }).then((c) => c.request('REQUEST', header as never, undefined, { timeoutMs: PEER_QUERY_TIMEOUT_MS }));
    try { return (await Promise.race([late, asked])).header; } finally { clearTimeout(timer); }
  }

  private async migrate(msg: Message, conn: Connection): Promise<MigrationMetrics> {
    const h = msg.header;
    const pid = str(h, 'pid', 'migrate');
    const to = str(h, 'to', 'migrate');
    const algorithm = optStr(h, 'algorithm', 'migrate');
    const variant = optStr(h, 'variant', 'migrate');
    const fileServer = optStr(h, 'fileServer', 'migrate');
    const token = h.progress === true ? msg.id : undefined;
    if (!this.ctx.table.get(pid)) {
      const where = await this.locate(pid).catch(() => undefined);
      throw new FerryError('not-here', where ? `process ${pid} runs on ${where.node} (${where.addr}): ask that node` : `no process ${pid} on ${this.ctx.name}`);
    }
    const pageSize = typeof h.pageSize === 'number' ? h.pageSize : undefined;
    const num = (k: string, min: number, max: number): number | undefined => {
      const v = h[k];
      if (v === undefined || v === null) return undefined;
      if (typeof v !== 'number' || !(v >= min && v <= max)) throw badRequest(`migrate: ${k} must be a number from ${min} to ${max}`);
      return v;
    };
    const compress = h.compress ?? 'none';
    if (!isCodec(compress)) throw badRequest(`migrate: compress must be one of ${CODECS.join(', ')}`);
    const options = {
      maxRounds: num('maxRounds', 0, 1000), downtimeLimitMs: num('downtimeLimitMs', 0, 3_600_000),
      thesisLimits: h.thesisLimits === true, autoConverge: h.autoConverge === true, compress,
      postcopyAfterRounds: num('postcopyAfterRounds', 1, 1000),
    };
    if (options.postcopyAfterRounds !== undefined && !Number.isInteger(options.postcopyAfterRounds)) throw badRequest('migrate: postcopyAfterRounds must be a whole number of rounds');
    return this.ctx.migrator.migrate({ pid, to, algorithm, variant, pageSize, options, ...(fileServer !== undefined ? { fileServer } : {}) }, token === undefined ? undefined : (p) => {
      if (conn.isOpen) conn.send('MIG_PROGRESS', { token, progress: p as never }).catch(() => {});
    });
  }

  /** Stop a node, unless processes on other nodes need its pages (then only with force: they will fail). */
  private async nodeStop(msg: Message): Promise<{ node: string; stopping: boolean; dependents: Dependent[] }> {
    const name = optStr(msg.header, 'name', 'node-stop') ?? this.ctx.name;
    const force = msg.header.force === true;
    if (name !== this.ctx.name) {
      const peer = await this.ctx.membership.peer(name);
      const r = await peer.request('REQUEST', { method: 'node-stop', name, force }, undefined, { timeoutMs: PEER_QUERY_TIMEOUT_MS });
      return r.header as never;
    }
    const dependents = this.ctx.migrator.pageServer.dependents().filter((d) => d.nodeState === 'up');
    if (dependents.length && !force)
      throw new FerryError('has-dependents', `node ${name} holds pages of ${describeDependents(dependents)}: they would fail if it stopped (ferry node stop ${name} --force stops it anyway)`);
    if (!this.ctx.requestStop) throw new FerryError('unsupported', `node ${name} cannot be stopped remotely`);
    const stop = this.ctx.requestStop;
    setTimeout(() => stop(dependents.length ? `stop forced (${describeDependents(dependents)} will fail)` : 'asked to stop'), 100).unref(); // the answer first
    return { node: name, stopping: true, dependents };
  }

  private async migrations(localOnly: boolean): Promise<{ migrations: MigrationMetrics[]; unreachable: { node: string; error: string }[] }> {
    const { items: migrations, unreachable } = await this.gather<MigrationMetrics>('migrations', 'migrations', this.ctx.migrator.list(), localOnly);
    migrations.sort((a, b) => a.startedAt.localeCompare(b.startedAt));
    return { migrations, unreachable };
  }

  /** Freeze for a moment, send the whole image to the client as a stream. */
  private async checkpoint(msg: Message, conn: Connection): Promise<{ bytes: number; stream: number }> {
    const pid = str(msg.header, 'pid', 'checkpoint');
    if (!this.ctx.table.get(pid)) {
      const where = await this.locate(pid).catch(() => undefined);
      throw new FerryError('not-here', where ? `process ${pid} runs on ${where.node} (${where.addr}): ask that node` : `no process ${pid} on ${this.ctx.name}`);
    }
    const chunks = await this.ctx.table.checkpoint(pid);
    const bytes = chunks.reduce((n, c) => n + c.length, 0);
    const stream = await conn.sendStream(chunks, { kind: 'image', token: msg.id ?? 0, bytes });
    return { bytes, stream };
  }

  /** Restore an uploaded image here as a new process of this node, attached to the client like run. */
  private async restore(msg: Message, conn: Connection): Promise<{ pid: string; node: string }> {
    const h = msg.header;
    const session = str(h, 'session', 'restore');
    const upload = str(h, 'upload', 'restore');
    const bytes = await this.ctx.uploads.take(conn, upload);
    const img = decodeImage(bytes, { source: optStr(h, 'name', 'restore') ?? 'uploaded' });
    let program;
    try { program = programOfImage(img); } catch (e) {
      const cached = this.ctx.programs.get(img.module.sha256);
      if (!cached) throw e;
      program = { path: img.meta.program, bytes: cached, hash: img.module.sha256 };
    }
    this.ctx.programs.put(program.hash, program.bytes);
    const pid = this.ctx.table.allocatePid();
    this.ctx.home.open(pid, this.ctx.stdio.sinkFor(conn, session, pid));
    try {
      await this.ctx.table.restore({ pid, image: img, program, sink: this.ctx.home.routeFor(pid, this.ctx.name) });
    } catch (e) {
      this.ctx.home.close(pid);
      throw e;
    }
    this.ctx.stdio.bindLocal(conn, session, pid);
    return { pid, node: this.ctx.name };
  }

  private async kill(pid: string, localOnly: boolean): Promise<{ pid: string; node: string }> {
    // A kill outranks a move: the migration is cancelled (or, committing, ends), then the
    // process is killed wherever it is (it refused as "moving").
    await this.ctx.migrator.settle(pid);
    if (this.ctx.table.get(pid)) {
      await this.ctx.table.kill(pid);
      return { pid, node: this.ctx.name };
    }
    if (localOnly) return this.ctx.table.kill(pid).then(() => ({ pid, node: this.ctx.name })); // throws no-such-process
    // Every member at once, as locate: the one that runs it kills it (a process runs on one
    // node, and one that is moving refuses), and a stalled member delays no kill but its own.
    const { value: node, failed } = await this.firstMember({ method: 'kill', pid, scope: 'local' }, (r) => String(r.node));
    if (node) return { pid, node };
    const busy = failed.find((f) => f.error instanceof FerryError && f.error.code === 'busy'); // it has it, but cannot kill it now
    if (busy) throw busy.error;
    // A member that did not answer may have it: say so, without asking it again.
    if (failed.some((f) => !isNoSuchProcess(f.error))) throw notFound(pid, undefined, failed);
    // No member had it: locate says how it ended, or finds it moved in the meantime (kill it there, once).
    const where = await this.locate(pid);
    if (where.node === this.ctx.name) await this.ctx.table.kill(pid);
    else await this.askMember(where.node, { method: 'kill', pid, scope: 'local' });
    return { pid, node: where.node };
  }
}

const isNoSuchProcess = (e: Error): boolean => e instanceof FerryError && e.code === 'no-such-process';

/** "No process pid in the cluster", with how it ended (if known) and who did not answer. */
function notFound(pid: string, ended: string | undefined, failed: { node: string; error: Error }[]): FerryError {
  if (!/^[^/\s]+\/\d+$/.test(pid)) return new FerryError('no-such-process', `no process ${pid}: a pid looks like NODE/N`);
  const silent = failed.filter((f) => !isNoSuchProcess(f.error)).map((f) => `${f.node} did not answer: ${f.error.message}`);
  const why = [...(ended ? [`it has already ${ended}`] : []), ...silent];
  return new FerryError('no-such-process', `no process ${pid} in the cluster${why.length ? ` (${why.join('; ')})` : ''}`);
}
