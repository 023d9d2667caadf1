import { ClusterClient, startCluster } from './test/helpers/cluster.ts';
import { clusterRun } from './test/helpers/modes.ts';
import { WORKLOADS } from './test/helpers/workloads.ts';
const [alg, wname, link, ...args] = process.argv.slice(2);
const w = { ...WORKLOADS.find((x) => x.name === wname)!, args };
const c = await startCluster(3, { names: ['a', 'b', 'c'], extraArgs: link === 'loopback' ? [] : ['--link-bandwidth', link] });
const client = ClusterClient.for(c);
const t0 = Date.now();
try {
  const { outcome, during } = await clusterRun(c, client, w, { node: 'a' }, async (pid) => {
    const out = [];
    for (const to of ['b', 'c', 'a']) {
      const m = await client.migrate(pid, to, { algorithm: alg });
      if (process.env.FULL) console.log(JSON.stringify(m)); console.log(Date.now() - t0, to, m.state, m.error?.message, JSON.stringify({ sent: m.pages, bytes: m.bytes, faults: m.remoteFaults, down: m.downtimeMs, total: m.totalMs }));
      out.push(m);
    }
    return out;
  });
  console.log('exit', outcome.exitCode, outcome.stdout.slice(-200), outcome.stderr.slice(-500));
} finally { await c.stop(); }
console.log('ms', Date.now() - t0);
