// The node daemon's lifecycle: listen (TLS-PSK with a key), join the cluster
// through any member, keep the membership alive, serve the control API, run
// processes; stop cleanly (processes killed, members told, connections closed).
//
// Every connection, accepted or dialled, client or peer, gets the same
// handlers: REQUEST (control.ts), HEARTBEAT (membership.ts), PROC_OUTPUT /
// PROC_EXIT / PROC_INPUT (stdio.ts).
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, listen, Shaper, type Connection, type FerryServer, type ShapingOptions } from '../transport/index.ts';
import { ControlApi } from './control.ts';
import { formatAddress, parseAddress } from './fields.ts';
import { Membership } from './membership.ts';
import { ProcessTable } from './process-table.ts';
import { ProgramStore } from './programs.ts';
import { StdioRouter } from './stdio.ts';

export const NODE_CAPABILITY = 'ferry-node/1';

export interface NodeOptions {
  name: string;
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Members to join through (any one that answers). */
  join?: string[];
  /** Pre-shared key: every connection is TLS-PSK. Without it, plain TCP. */
  key?: Buffer;
  dataDir?: string;
  /** Shape this node's outgoing link (experiments). */
  shaping?: ShapingOptions;
  log?: (msg: string) => void;
}

export class NodeDaemon {
  readonly name: string;
  readonly dataDir: string;
  readonly membership: Membership;
  readonly table: ProcessTable;
  private server!: FerryServer;
  private addrValue = '';
  private stopping: Promise<void> | undefined;
  private readonly dialled = new Set<Connection>();

  private constructor(private readonly opts: NodeOptions) {
    this.name = opts.name;
    this.dataDir = opts.dataDir ?? join(tmpdir(), `ferry-node-${opts.name}`);
    mkdirSync(this.dataDir, { recursive: true });
    const log = opts.log;
    const shaper = Shaper.from(opts.shaping);
    this.table = new ProcessTable(opts.name, log);
    const stdio = new StdioRouter(this.table, log);
    const programs = new ProgramStore(this.dataDir);
    const self = this;
    this.membership = new Membership({
      name: opts.name,
      get addr() { return self.addrValue; },
      dial: async (addr) => {
        const { host, port } = parseAddress(addr);
        const conn = await connect(host, port, { key: opts.key, node: opts.name, role: 'node', shaping: shaper, capabilities: [NODE_CAPABILITY] });
        this.dialled.add(conn);
        conn.onClose(() => this.dialled.delete(conn));
        this.install(conn);
        return conn;
      },
      log,
    });
    const control = new ControlApi({
      name: opts.name,
      get addr() { return self.addrValue; },
      membership: this.membership, table: this.table, stdio, programs,
    });
    this.install = (conn: Connection) => {
      conn.handle('REQUEST', control.handle);
      conn.on('HEARTBEAT', (m) => this.membership.onHeartbeat(m));
      conn.on('PROC_OUTPUT', stdio.onOutput);
      conn.on('PROC_EXIT', stdio.onExit);
      conn.on('PROC_INPUT', stdio.onInput);
    };
    this.shaper = shaper;
  }

  private readonly install: (conn: Connection) => void;
  private readonly shaper: Shaper | undefined;

  get addr(): string { return this.addrValue; }

  static async start(opts: NodeOptions): Promise<NodeDaemon> {
    const d = new NodeDaemon(opts);
    d.server = await listen(opts.host, opts.port, {
      key: opts.key, node: opts.name, role: 'node', capabilities: [NODE_CAPABILITY], shaping: d.shaper,
      onConnection: (conn) => d.install(conn),
      onRefused: (err, remote) => opts.log?.(`refused ${remote}: ${err.message}`),
    });
    d.addrValue = formatAddress(opts.host, d.server.port);
    try {
      if (opts.join?.length) await d.membership.join(opts.join);
    } catch (e) {
      await d.server.close();
      throw e;
    }
    d.membership.start();
    return d;
  }

  /** Kill this node's processes, tell the members, close every connection. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      await this.table.killAll();
      await this.membership.stop();
      for (const c of this.dialled) c.destroy();
      await this.server.close();
    })();
    return this.stopping;
  }
}
