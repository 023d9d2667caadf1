// The compliance suite (issue 4): one descriptor per case (algorithm, options,
// workload, link, expected), every algorithm x every workload x (unshaped
// loopback, 100 Mb/s), several migrations mid-run over real node daemons; the
// output must equal an unmigrated run's. Per-algorithm invariants on the metrics
// are checked for every migration.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterClient, startCluster, type Cluster } from './helpers/cluster.ts';
import { clusterRun, oracle, type Outcome } from './helpers/modes.ts';
import { prepareAllVariants, WORKLOADS, type Workload } from './helpers/workloads.ts';
import { ALGORITHMS, type MigrationMetrics } from '../src/migration/index.ts';

interface Case {
  algorithm: string;
  options?: Record<string, unknown>;
  workload: Workload;
  link: 'loopback' | '100mbit';
  migrations: number;
}

/** Runs long enough for a few migrations on a loaded 2-core machine, short enough for CI. */
const ARGS: Record<string, string[]> = {
  getpid: ['10000000'], rma: ['4', '400'], reference: ['20000'], pageinc: ['16', '20000'], recurse: ['5000', '20000'],
  filecopy: ['/data/in.bin', '/data/out.bin', '4096', '1500'], sleeper: ['30', '50'], asobjects: ['3000'],
};
/** On a slow link a round of a heavy writer takes long: these run longer there. */
const ARGS_SLOW: Record<string, string[]> = { rma: ['4', '2000'], pageinc: ['4', '800000'], reference: ['60000'], sleeper: ['80', '50'], getpid: ['10000000'] };
const MIGRATIONS = Number(process.env.FERRY_COMPLIANCE_MIGRATIONS ?? 3);
const LINKS = (process.env.FERRY_COMPLIANCE_LINKS ?? 'loopback,100mbit').split(',') as Case['link'][];

const CASES: Case[] = ALGORITHMS.flatMap((algorithm) => LINKS.flatMap((link) =>
  WORKLOADS.filter((w) => ARGS[w.name]).map((w) => ({
    algorithm, link, migrations: MIGRATIONS,
    workload: { ...w, args: (link !== 'loopback' ? ARGS_SLOW[w.name] : undefined) ?? ARGS[w.name]! },
  }))));

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
  'post-copy': (m) => {
    assert.equal(m.preparationMs, 0);
    assert.equal(m.bytes.downtime < 64 * 1024 + m.pages.addressSpace, true, `down time carries the state alone (${m.bytes.downtime} bytes)`);
    assert.ok(m.postProcessingMs !== null && m.totalMs !== null, 'post-processing ended: no residual dependency left');
    assert.deepEqual(m.residualDependencies, []);
    assert.ok(m.pages.maxSendsPerPage <= 2, 'a page goes at most twice (pushed while a fault fetched it)');
  },
};

function same(actual: Outcome, expected: Outcome, what: string): void {
  assert.equal(actual.exitCode, expected.exitCode, `${what}: exit code (stderr: ${actual.stderr.slice(-800)})`);
  assert.equal(actual.stdout, expected.stdout, `${what}: stdout`);
  assert.deepEqual(actual.files, expected.files, `${what}: files`);
}

for (const link of LINKS) {
  describe(`compliance over ${link}`, { timeout: 1_800_000 }, () => {
    let c: Cluster;
    let client: ClusterClient;
    const expected = new Map<string, Outcome>();
    before(async () => {
      await prepareAllVariants();
      c = await startCluster(3, { names: ['a', 'b', 'c'], extraArgs: link === 'loopback' ? [] : ['--link-bandwidth', link] });
      client = ClusterClient.for(c);
    });
    after(async () => { await c?.stop(); });

    for (const k of CASES.filter((x) => x.link === link)) {
      it(`${k.algorithm} ${k.workload.name}: ${k.migrations} migrations mid-run, output identical`, async () => {
        const key = `${k.workload.name} ${k.workload.args.join(' ')}`;
        if (!expected.has(key)) expected.set(key, await oracle(k.workload));
        const exp = expected.get(key)!;
        assert.equal(exp.exitCode, 0, exp.stderr);
        const { outcome, during: ms } = await clusterRun(c, client, k.workload, { node: 'a' }, async (pid) => {
          const done: MigrationMetrics[] = [];
          for (const to of ['b', 'c', 'a', 'b', 'c', 'a'].slice(0, k.migrations)) {
            let m: MigrationMetrics;
            try { m = await client.migrate(pid, to, { algorithm: k.algorithm, ...k.options }); } catch (e) {
              if ((e as { code?: string }).code === 'no-such-process') break;
              throw e;
            }
            if (m.state !== 'completed' && m.error?.code === 'process-ended') break;
            assert.equal(m.state, 'completed', `${k.algorithm} to ${to}: ${m.error?.message}`);
            done.push(m);
          }
          return done;
        });
        same(outcome, exp, `${k.algorithm} over ${link}`);
        assert.ok(ms.length >= Math.min(2, k.migrations), `several migrations mid-run (${ms.length} of ${k.migrations} before it ended)`);
        for (const m of ms) { assert.equal(m.algorithm, k.algorithm); INVARIANTS[k.algorithm]?.(m); }
      });
    }
  });
}
