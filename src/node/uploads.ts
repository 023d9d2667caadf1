// Bytes a client uploads before the request that uses them (an image for
// `restore`): a stream {kind: 'upload', upload: ID} on the same connection.
// Requests and streams are both bulk frames, delivered in order, so the
// stream has begun by the time its request arrives.
import { FerryError } from '../errors.ts';
import type { Connection, IncomingStream } from '../transport/index.ts';

const MAX_PENDING = 8;

export class Uploads {
  private readonly byConn = new WeakMap<Connection, Map<string, Promise<Buffer>>>();

  accept(s: IncomingStream, conn: Connection): void {
    const id = String(s.meta.upload ?? '');
    let m = this.byConn.get(conn);
    if (!m) { m = new Map(); this.byConn.set(conn, m); }
    if (!id || m.size >= MAX_PENDING) { void s.collect().catch(() => {}); return; }
    const p = s.collect();
    p.catch(() => {});
    m.set(id, p);
  }

  async take(conn: Connection, id: string): Promise<Buffer> {
    const m = this.byConn.get(conn);
    const p = m?.get(id);
    if (!p) throw new FerryError('bad-request', `no upload '${id}' on this connection (send the stream first)`);
    m!.delete(id);
    return p;
  }
}
