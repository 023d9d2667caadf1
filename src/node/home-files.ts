// Files served by the home node (Sprite's way, `--files home`): a process that
// runs elsewhere sends every file call to its home node (FILE_OP), which runs
// it on its own disk, confined to the process's preopened directories, and
// answers (FILE_REPLY). Each incarnation of the process (pid@node) is its own
// client with its own handles; the handles of the old one are closed when the
// process moves on, all of them when it ends. While the process runs at home
// it uses the disk directly.
import { FerryError } from '../errors.ts';
import type { Connection, Message, Reply } from '../transport/index.ts';
import { FileService } from '../wasi/file-service.ts';
import { decodeFileOp, decodeFileReply, encodeFileOp, encodeFileReply, type FileOpReply, type FileOpRequest } from '../wasi/remote-fs.ts';
import type { Membership } from './membership.ts';

const FILE_OP_TIMEOUT_MS = 30_000;

export class HomeFiles {
  private readonly services = new Map<string, { service: FileService; clients: Set<string> }>();

  constructor(private readonly membership: Membership) {}

  /** A process started here with --files home, its preopened host directories as roots. */
  open(pid: string, roots: string[]): void {
    this.services.set(pid, { service: new FileService({ roots }), clients: new Set() });
  }

  /** It runs on `node` now: close what earlier incarnations left open. */
  moved(pid: string, node: string): void {
    const s = this.services.get(pid);
    if (!s) return;
    for (const c of s.clients) if (c !== `${pid}@${node}`) { s.service.closeAll(c); s.clients.delete(c); }
  }

  /** It ended: close everything. */
  close(pid: string): void {
    const s = this.services.get(pid);
    if (!s) return;
    for (const c of s.clients) s.service.closeAll(c);
    this.services.delete(pid);
  }

  /** FILE_OP from the node running one of our processes. */
  onFileOp = (msg: Message, conn: Connection): Reply => {
    const pid = msg.header.pid;
    const s = typeof pid === 'string' ? this.services.get(pid) : undefined;
    let reply: FileOpReply;
    if (!s) reply = { ok: false, code: 'EBADF', message: `no files served for process ${String(pid)} on this node` };
    else {
      let req: FileOpRequest;
      try { req = decodeFileOp(msg.header, msg.body); } catch (e) { throw new FerryError('bad-request', `FILE_OP: ${(e as Error).message}`); }
      const client = `${pid as string}@${conn.peer.node}`;
      s.clients.add(client);
      reply = s.service.execute(client, req);
    }
    const r = encodeFileReply(reply);
    return { code: 'FILE_REPLY', header: r.header, body: r.body };
  };

  /** The fileOps of a process running here whose home is elsewhere. */
  remote(pid: string, home: string): (req: FileOpRequest) => Promise<FileOpReply> {
    return async (req) => {
      const conn = await this.membership.peer(home, { evenIfDown: true });
      const q = encodeFileOp(req, { pid });
      const m = await conn.request('FILE_OP', q.header, q.body, { timeoutMs: FILE_OP_TIMEOUT_MS, priority: 'urgent' });
      return decodeFileReply(m.header, m.body);
    };
  }
}
