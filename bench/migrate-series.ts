// A series of back-to-back Total Copy migrations of rma between two fresh nodes on loopback
// (a -> b -> a ...), each one's total printed in order: how the migrations of a cluster that has
// just started speed up as V8 compiles their data path. bench/migrate.ts measures after a warm-up
// (warmUpsFor there) that this series sizes.
//
// usage: node --import tsx bench/migrate-series.ts [MB] [N] [--tcp]   (default 4 MB, 30 migrations,
//        TLS-PSK; --tcp: nodes without a key, plain TCP)
import { ClusterClient, startCluster } from '../test/helpers/cluster.ts';
import { hop, startRma } from './migrate.ts';
import { median } from './util.ts';

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const mb = Number(args[0] ?? 4), n = Number(args[1] ?? 30), tcp = process.argv.includes('--tcp');
if (!(mb > 0) || !(n >= 2)) throw new Error('usage: migrate-series.ts [MB] [N >= 2] [--tcp]');
const c = await startCluster(2, { names: ['a', 'b'], noKey: tcp });
try {
  const client = ClusterClient.for(c);
  const { pid, run } = await startRma(c, client, mb);
  const ms: number[] = [];
  for (let i = 0; i < n; i++) {
    ms.push((await hop(client, pid, i, {}, `migration ${i + 1}`)).totalMs ?? NaN);
  }
  await client.call('kill', { pid }).catch(() => {});
  await run;
  const half = Math.floor(n / 2);
  console.log(`${n} Total Copy migrations of rma ${mb} MB over loopback ${tcp ? 'plain TCP' : 'TLS-PSK'}, total ms in order: ${ms.map((x) => x.toFixed(1)).join(' ')}`);
  console.log(`median of the first ${half}: ${median(ms.slice(0, half)).toFixed(1)} ms; of the last ${n - half}: ${median(ms.slice(half)).toFixed(1)} ms`);
} finally { await c.stop(); }
