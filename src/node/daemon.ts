// The node daemon's lifecycle: listen (TLS-PSK with a key), join the cluster
// through any member, keep the membership alive, serve the control API, run
// processes; stop cleanly (processes killed, members told, connections closed).
//
// Every connection, accepted or dialled, client or peer, gets the same
// handlers: REQUEST (control.ts), HEARTBEAT (membership.ts), PROC_OUTPUT /
// PROC_EXIT / PROC_INPUT (stdio.ts), HOME_* (home.ts), MIG_* (migrator.ts),
// and streams by kind (module: migrator.ts; upload: uploads.ts).
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, listen, Shaper, type Connection, type FerryServer, type ShapingOptions } from '../transport/index.ts';
import { ControlApi } from './control.ts';
import { formatAddress, parseAddress } from './fields.ts';
import { Membership, notUp } from './membership.ts';
import { ProcessTable } from './process-table.ts';
import { warmWorkers } from '../vm/process.ts';
import { ProgramStore } from './programs.ts';
import { StdioRouter } from './stdio.ts';
import { HomeRouter } from './home.ts';
import { Migrator } from './migrator.ts';
import { DialBack } from './dial-back.ts';
import { Uploads } from './uploads.ts';
import { Faults } from './faults.ts';
import { HomeFiles } from './home-files.ts';
import { FerryError } from '../errors.ts';
import type { Dependent } from './page-server.ts';
import type { Log } from './log.ts';
import { makeDir } from '../dirs.ts';
import { DEFAULT_GUEST_NICE, setGuestNice } from '../vm/guest-priority.ts';
import { enableReclaim } from '../vm/reclaim.ts';

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
  /** What this node serves besides running processes (file-server.ts ROLES). */
  roles?: string[];
  /** How much nicer than this node its guests' threads run (src/vm/guest-priority.ts; default 10). */
  guestNice?: number;
  /** Fault injection (faults.ts), e.g. "dest-commit:crash"; tests only. */
  faults?: string;
  log?: Log;
}

export class NodeDaemon {
  readonly name: string;
  readonly dataDir: string;
  readonly membership: Membership;
  readonly table: ProcessTable;
  readonly migrator: Migrator;
  private server!: FerryServer;
  private addrValue = '';
  private stopping: Promise<void> | undefined;
  private readonly dialled = new Set<Connection>();
  private stopRequest!: (why: string) => void;
  /** Resolves when the control API was asked to stop this node (`ferry node stop`): the owner stops it. */
  readonly stopRequested: Promise<string> = new Promise((r) => (this.stopRequest = r));

  private constructor(private readonly opts: NodeOptions) {
    this.name = opts.name;
    this.dataDir = opts.dataDir ?? join(tmpdir(), `ferry-node-${opts.name}`);
    makeDir(this.dataDir, 'data directory');
    const log = opts.log;
    const shaper = Shaper.from(opts.shaping);
    this.table = new ProcessTable(opts.name, log);
    const programs = new ProgramStore(this.dataDir);
    const uploads = new Uploads();
    const self = this;
    const dial = async (addr: string) => {
      const { host, port } = parseAddress(addr);
      const conn = await connect(host, port, { key: opts.key, node: opts.name, role: 'node', shaping: shaper, capabilities: [NODE_CAPABILITY] });
      this.dialled.add(conn);
      conn.onClose(() => this.dialled.delete(conn));
      this.install(conn);
      return conn;
    };
    this.membership = new Membership({
      name: opts.name,
      get addr() { return self.addrValue; },
      dial,
      roles: opts.roles,
      log,
    });
    const homeFiles = new HomeFiles(this.membership);
    const home = new HomeRouter(opts.name, this.membership, (pid, offset, data, eof) => this.table.inputAt(pid, offset, data, eof), log,
      { moved: (pid, node) => homeFiles.moved(pid, node), ended: (pid) => homeFiles.close(pid) });
    const stdio = new StdioRouter((pid, data, eof) => home.input(pid, data, eof), log);
    // A member taken for down is still dialled (it may only be slow); one that left is not.
    const dialNode = async (name: string) => {
      const m = this.membership.list().find((x) => x.name === name);
      if (!m) throw new FerryError('no-such-node', `no node named ${name} in the cluster`);
      if (m.state === 'left') throw new FerryError('node-down', `node ${notUp(name, m.state, m.lastSeenMsAgo)}`);
      try { return await dial(m.addr); } catch (e) {
        if (m.state !== 'down') throw e;
        throw new FerryError(e instanceof FerryError ? e.code : 'node-down', `node ${notUp(name, m.state, m.lastSeenMsAgo)}: ${(e as Error).message}`, { cause: e });
      }
    };
    const dialBack = new DialBack({ peer: (name) => this.membership.peer(name), dial: dialNode });
    this.migrator = new Migrator({
      name: opts.name, membership: this.membership, table: this.table, home, homeFiles, programs, log, roles: opts.roles,
      faults: new Faults(opts.faults, log),
      dialNode,
      dialledBy: (name) => dialBack.from(name),
    });
    const control = new ControlApi({
      name: opts.name,
      get addr() { return self.addrValue; },
      membership: this.membership, table: this.table, stdio, programs, home, homeFiles, migrator: this.migrator, uploads,
      requestStop: (why) => this.stopRequest(why),
    });
    this.install = (conn: Connection) => {
      conn.handle('REQUEST', control.handle);
      conn.on('HEARTBEAT', (m) => this.membership.onHeartbeat(m));
      conn.on('PROC_OUTPUT', stdio.onOutput);
      conn.on('PROC_EXIT', stdio.onExit);
      conn.on('PROC_INPUT', stdio.onInput);
      conn.on('HOME_OUTPUT', home.onOutput);
      conn.on('HOME_EXIT', home.onExit);
      conn.on('HOME_INPUT', home.onInput);
      conn.on('HOME_ATTACH', home.onAttach);
      conn.handle('FILE_OP', homeFiles.onFileOp);
      dialBack.install(conn);
      this.migrator.install(conn);
      conn.onStream((s, c) => {
        if (s.meta.kind === 'module' && c.peer.role === 'node') this.migrator.onModuleStream(s);
        else if (s.meta.kind === 'upload') uploads.accept(s, c);
        else void s.collect().catch(() => {}); // unknown: drain and drop
      });
    };
    this.shaper = shaper;
  }

  private readonly install: (conn: Connection) => void;
  private readonly shaper: Shaper | undefined;

  get addr(): string { return this.addrValue; }

  static async start(opts: NodeOptions): Promise<NodeDaemon> {
    setGuestNice(opts.guestNice ?? DEFAULT_GUEST_NICE); // before the first worker
    const d = new NodeDaemon(opts);
    enableReclaim(() => d.migrator.busy());
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
    void warmWorkers.prewarm(); // the first process that runs or arrives here finds a loaded worker
    return d;
  }

  /** Processes on other nodes, up, that need pages held here: stopping would make them fail. */
  dependents(): Dependent[] {
    return this.migrator.pageServer.dependents().filter((d) => d.nodeState === 'up');
  }

  /** Kill this node's processes (their terminals hear why), tell the members, close every connection. */
  stop(why = 'asked to stop'): Promise<void> {
    this.stopping ??= (async () => {
      await this.table.killAll(`node ${this.name} stopped (${why})`);
      await this.membership.stop();
      for (const c of this.dialled) c.destroy();
      await this.server.close();
    })();
    return this.stopping;
  }
}
