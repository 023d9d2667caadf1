// The compliance suite (issue 4): one descriptor per case (algorithm, options,
// workload, link, expected), every algorithm x every workload x (unshaped
// loopback, 100 Mb/s), several migrations mid-run over real node daemons; the
// output must equal an unmigrated run's. Per-algorithm invariants on the metrics
// are checked for every migration.
//
// The cases run from six test files (test/compliance-*.test.ts), one per link and
// family of algorithms, so node:test runs them side by side and none runs for long:
//   copying:     the address space moves before the process resumes (total-copy,
//                pre-copy, queued-pre-copy, assisted-post-copy);
//   faulting:    the process resumes first and faults its pages in from the
//                source (post-copy, demand-paging);
//   file-server: it faults them in from a file server (flushing, freeze-free).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { addFileServer, ClusterClient, eventually, startCluster, type Cluster } from '../helpers/cluster.ts';
import { clusterRun, EndedFirst, outlasting, reference, type Outcome } from '../helpers/modes.ts';
import { longer, prepareAllVariants, WORKLOADS, type Workload } from '../helpers/workloads.ts';
import { ALGORITHMS, VARIANTS, strategyFor, type MigrationMetrics } from '../../src/migration/index.ts';
import { HEAP_PAGES } from '../../src/migration/freeze-free.ts';

/** The file server of flushing and freeze-free: a fourth node, started by their first case
 *  (the other algorithms' cases run on a, b and c alone). */
const FILE_SERVER = 'f';

interface Case {
  algorithm: string;
  /** The algorithm's variant (`--variant`), for algorithms that have several. */
  variant?: string;
  options?: Record<string, unknown>;
  workload: Workload;
  link: 'loopback' | '100mbit';
  migrations: number;
}

/** Runs long enough for a few migrations on a loaded 2-core machine, short enough for CI. */
const ARGS: Record<string, string[]> = {
  getpid: ['10000000'], rma: ['4', '400'], reference: ['20000'], pageinc: ['16', '60000'], recurse: ['5000', '20000'],
  filecopy: ['/data/in.bin', '/data/out.bin', '4096', '1500'], sleeper: ['60', '50'], asobjects: ['3000'],
};
/** On a slow link a round of a heavy writer takes long: these run longer there. */
const ARGS_SLOW: Record<string, string[]> = { rma: ['4', '4000'], pageinc: ['4', '1000000'], reference: ['60000'], sleeper: ['80', '50'], getpid: ['10000000'] };
const MIGRATIONS = Number(process.env.FERRY_COMPLIANCE_MIGRATIONS ?? 3);

/** The families of algorithms (see the header): every algorithm is in exactly one. */
export const FAMILIES = {
  copying: ['total-copy', 'pre-copy', 'queued-pre-copy', 'assisted-post-copy'],
  faulting: ['post-copy', 'demand-paging'],
  'file-server': ['flushing', 'freeze-free'],
} as const;
export type Family = keyof typeof FAMILIES;

function casesOf(family: Family, link: Case['link']): Case[] {
  const algorithms = (FAMILIES[family] as readonly string[]).filter((a) => ALGORITHMS.includes(a));
  return algorithms.flatMap((algorithm) => (VARIANTS[algorithm] ?? [undefined]).flatMap((variant) =>
    WORKLOADS.filter((w) => ARGS[w.name]).map((w) => ({
      algorithm, ...(variant ? { variant } : {}), link, migrations: MIGRATIONS,
      workload: { ...w, args: (link !== 'loopback' ? ARGS_SLOW[w.name] : undefined) ?? ARGS[w.name]! },
    }))));
}

/** No algorithm is left out of the suite. */
export function unfiledAlgorithms(): string[] {
  const filed = new Set<string>(Object.values(FAMILIES).flat());
  return ALGORITHMS.filter((a) => !filed.has(a));
}

/** The execution state's bytes at most (globals, WASI state, the saved call stack: a deep
 *  recursion's is tens of KiB). "The state alone" in the down time means under this. */
const STATE_BYTES = 1 << 20;

/** What every migration of an algorithm must show in its metrics. */
const INVARIANTS: Record<string, (m: MigrationMetrics) => void> = {
  'total-copy': (m) => {
    assert.equal(m.pages.maxSendsPerPage, 1, 'total copy sends each non-zero page exactly once');
    assert.equal(m.preparationMs, 0);
    assert.equal(m.rounds, 0);
  },
  'pre-copy': (m) => {
    assert.ok(m.rounds >= 1, 'at least one round while running');
    assert.ok(m.preparationMs !== null && m.preparationMs > 0);
    assert.ok(m.pages.maxSendsPerPage <= m.rounds + 1, 'a page is sent at most once per round plus once at the freeze');
  },
  'queued-pre-copy': (m) => {
    assert.ok(m.rounds >= 1, 'at least one round while running');
    assert.ok(m.preparationMs !== null && m.preparationMs > 0);
    assert.equal(m.switchedToPostCopy, false);
    // A page sent while running goes again only after a scan saw it written and it then stayed
    // unwritten for a whole interval until the next scan: at most once every two rounds, plus
    // once at the freeze. Pre-copy's bound is once a round (rounds + 1): never less than this.
    assert.ok(m.pages.maxSendsPerPage <= Math.ceil(m.rounds / 2) + 1,
      `a page is sent at most once every two rounds plus once at the freeze (${m.pages.maxSendsPerPage} sends, ${m.rounds} rounds)`);
  },
  'post-copy': (m) => {
    assert.equal(m.preparationMs, 0);
    assert.equal(m.bytes.downtime < STATE_BYTES + m.pages.addressSpace, true, `down time carries the state alone (${m.bytes.downtime} bytes)`);
    assert.ok(m.postProcessingMs !== null && m.totalMs !== null, 'post-processing ended: no residual dependency left');
    assert.deepEqual(m.residualDependencies, []);
    assert.ok(m.pages.maxSendsPerPage <= 2, 'a page goes at most twice (pushed while a fault fetched it)');
  },
  'flushing': (m) => {
    assert.equal(m.preparationMs, 0);
    assert.equal(m.pages.sent, 0, 'no page goes to the destination');
    assert.ok(m.bytes.downtime < STATE_BYTES + m.pages.addressSpace, `down time carries the state alone to the destination (${m.bytes.downtime} bytes)`);
    assert.equal(m.fileServer?.node, FILE_SERVER);
    assert.ok(m.fileServer.pages > 0 && m.fileServer.bytes >= m.fileServer.pages * m.pages.pageSize, `the pages went to the file server (${m.fileServer.pages} pages, ${m.fileServer.bytes} bytes)`);
    assert.ok(m.fileServer.flushMs !== null && m.fileServer.flushMs <= m.downtimeMs!, 'flushed during the down time');
    assert.deepEqual(m.residualDependencies, [FILE_SERVER], 'the dependency is on the file server, not the source');
    assert.equal(m.totalMs, null, 'total time open while the dependency remains');
  },
  'freeze-free': (m) => {
    assert.equal(m.preparationMs, 0);
    assert.ok(m.bytes.downtime < STATE_BYTES + m.pages.addressSpace + (3 + HEAP_PAGES) * m.pages.pageSize, `down time carries the state and a few pages (${m.bytes.downtime} bytes)`);
    assert.equal(m.fileServer?.node, FILE_SERVER);
    assert.ok(m.pages.maxSendsPerPage <= 1, 'no page sent twice to the destination');
    if (m.residualDependencies.length) {
      // The usual end: every page flushed, the faults handed over to the file server.
      assert.deepEqual(m.residualDependencies, [FILE_SERVER], 'the source has no dependency left; the file server has');
      assert.ok(m.fileServer.flushMs !== null && m.fileServer.flushMs > m.downtimeMs!, 'flushed after the process resumed');
      assert.ok(m.fileServer.pages > 0);
      assert.equal(m.totalMs, null);
    } else assert.notEqual(m.totalMs, null, 'it no longer needed the source (ended or had every page) before the flush ended');
  },
  'demand-paging': (m) => {
    assert.equal(m.preparationMs, 0);
    assert.equal(m.totalMs, null, 'migrate returns while the dependency remains (total time open)');
    assert.deepEqual(m.residualDependencies, [m.from]);
    // The state alone (a deep recursion's stack makes it tens of KiB): no page in the down time.
    if (m.variant === 'copy-on-reference') assert.ok(m.bytes.downtime < STATE_BYTES, `down time carries the state alone (${m.bytes.downtime} bytes)`);
    assert.ok(m.pages.maxSendsPerPage <= 1, 'no page sent twice');
  },
  'assisted-post-copy': (m) => {
    assert.equal(m.rounds, 1, 'one pass while running');
    assert.ok(m.preparationMs !== null && m.preparationMs > 0);
    assert.equal(m.bytes.downtime < STATE_BYTES + m.pages.addressSpace, true, `down time carries the state alone (${m.bytes.downtime} bytes)`);
    assert.ok(m.pages.maxSendsPerPage <= 2, 'no page is sent more than twice (the pass, then once more if modified since)');
    assert.ok(m.pages.resent <= m.modifiedSincePass, `only pages modified since the pass go again (${m.pages.resent} resent, ${m.modifiedSincePass} modified)`);
    assert.ok(m.notModifiedAnswers <= m.pages.addressSpace);
    assert.ok(m.postProcessingMs !== null && m.totalMs !== null, 'post-processing ended: no residual dependency left');
    assert.deepEqual(m.residualDependencies, []);
  },
};

/** What every migration of an algorithm must show once the process has ended (residual dependencies
 *  closed). `last`: the process ran to its end after this one; after an earlier one it may have been
 *  frozen again before it ran at all (back-to-back hops), touching no page there. */
const FINAL_INVARIANTS: Record<string, (m: MigrationMetrics, last: boolean) => void> = {
  'flushing': (m, last) => {
    assert.notEqual(m.totalMs, null, 'the file server dropped the store (the process ended or moved on)');
    assert.deepEqual(m.residualDependencies, []);
    if (last) assert.ok(m.remoteFaults > 0, 'every page it used came from the file server');
  },
  'freeze-free': (m) => {
    assert.notEqual(m.totalMs, null, 'the dependency closed');
    assert.deepEqual(m.residualDependencies, []);
  },
  'demand-paging': (m, last) => {
    assert.notEqual(m.totalMs, null, 'the dependency closed (the process ended or moved on)');
    assert.deepEqual(m.residualDependencies, []);
    assert.ok(m.pages.maxSendsPerPage <= 1, `each page sent at most once (${m.pages.maxSendsPerPage})`);
    if (m.variant === 'copy-on-reference' && last) assert.ok(m.remoteFaults > 0, 'copy-on-reference: every page it used came by a remote fault');
  },
};

function same(actual: Outcome, expected: Outcome, what: string): void {
  assert.equal(actual.exitCode, expected.exitCode, `${what}: exit code (stderr: ${actual.stderr.slice(-800)}; stdout ends: ${actual.stdout.slice(-400)})`);
  assert.equal(actual.stdout, expected.stdout, `${what}: stdout`);
  assert.deepEqual(actual.files, expected.files, `${what}: files`);
}

/** The cases of one family over one link, on a cluster of their own. */
export function complianceSuite(family: Family, link: Case['link']): void {
  describe(`compliance: ${family} algorithms over ${link}`, () => {
    it('every algorithm is in a family of the suite', () => assert.deepEqual(unfiledAlgorithms(), []));
    let c: Cluster;
    let client: ClusterClient;
    const expected = new Map<string, Outcome>();
    before(async () => {
      await prepareAllVariants();
      c = await startCluster(3, { names: ['a', 'b', 'c'], extraArgs: link === 'loopback' ? [] : ['--link-bandwidth', link] });
      client = ClusterClient.for(c);
    });
    after(async () => { await c?.stop(); });

    for (const k of casesOf(family, link)) {
      it(`${k.algorithm}${k.variant ? ` ${k.variant}` : ''} ${k.workload.name}: ${k.migrations} migrations mid-run, output identical`, async () => {
        // Where it ends before its migrations (a fast machine), it runs again 4x longer.
        const ms = await outlasting([1, 4], async (scale) => {
          const w = longer(k.workload, scale);
          const key = `${w.name} ${w.args.join(' ')}`;
          if (!expected.has(key)) expected.set(key, await reference(w));
          const exp = expected.get(key)!;
          assert.equal(exp.exitCode, 0, exp.stderr);
          if (strategyFor(k.algorithm).fileServer && !c.nodes.some((n) => n.name === FILE_SERVER)) // every node that may be a source must know the role
            await addFileServer(c, FILE_SERVER, link === 'loopback' ? [] : ['--link-bandwidth', link], [0, 1, 2]);
          let runPid = '';
          const { outcome, during: ms } = await clusterRun(c, client, w, { node: 'a' }, async (pid) => {
            runPid = pid;
            const done: MigrationMetrics[] = [];
            for (const to of ['b', 'c', 'a', 'b', 'c', 'a'].slice(0, k.migrations)) {
              let m: MigrationMetrics;
              try { m = await client.migrate(pid, to, { algorithm: k.algorithm, ...(k.variant ? { variant: k.variant } : {}), ...k.options }); } catch (e) {
                if ((e as { code?: string }).code === 'no-such-process') break;
                throw e;
              }
              if (m.state !== 'completed' && m.error?.code === 'process-ended') break;
              assert.equal(m.state, 'completed', `${k.algorithm} to ${to}: ${m.error?.message}`);
              done.push(m);
            }
            return done;
          });
          try { same(outcome, exp, `${k.algorithm} over ${link}`); } catch (e) {
            // What the nodes logged about this process: the failure's story (a flake is otherwise lost).
            const lines = c.nodes.flatMap((n) => n.log().split('\n').filter((l) => runPid && l.includes(runPid)).map((l) => `${n.name}: ${l}`));
            (e as Error).message += `\nnode logs of ${runPid}:\n${lines.slice(-60).join('\n')}`;
            throw e;
          }
          // It ended (output right) before most of its migrations: this machine ran it too fast.
          if (ms.length < Math.min(2, k.migrations)) throw new EndedFirst(w, new Error(`${ms.length} of ${k.migrations} migrations before it ended`));
          for (const m of ms) { assert.equal(m.algorithm, k.algorithm); assert.equal(m.variant, k.variant); INVARIANTS[k.algorithm]?.(m); }
          return ms;
        });
        const final = FINAL_INVARIANTS[k.algorithm];
        if (final) {
          const ids = new Set(ms.map((m) => m.id));
          const records = await eventually(async () => {
            const all = ((await client.call('migrations')).migrations as unknown as MigrationMetrics[]).filter((m) => ids.has(m.id));
            return all.length === ids.size && all.every((m) => m.totalMs !== null) && all;
          }, 30_000, 'every residual dependency to close');
          for (const m of records) final(m, m.id === ms[ms.length - 1]!.id);
        }
      });
    }
  });
}
