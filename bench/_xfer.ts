// scratch: isolate the page pipeline
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { listen, connect } from '../src/transport/index.ts';
import { encodePageBatchParts, isZeroPage, PageBatchWriter } from '../src/memory/page-batch.ts';
import { prefault } from '../src/memory/prefault.ts';
const HERE = fileURLToPath(import.meta.url);
const MB = Number(process.env.MB ?? 512), PS = 4096, BATCH = Number(process.env.BATCH ?? (1 << 20));
const key = process.env.KEY || undefined;
if (process.argv[2] === '--send') {
  const mem = new Uint8Array(new WebAssembly.Memory({ initial: (MB << 20) >> 16, maximum: 65536, shared: true }).buffer);
  for (let i = 0; i < mem.length; i += 64) mem[i] = (i * 7) & 255 || 1;
  const c = await connect('127.0.0.1', Number(process.argv[3]), { key, node: 's' });
  for (let rep = 0; rep < 3; rep++) {
    await c.request('PING', {});
    const t0 = performance.now(); const u0 = process.cpuUsage();
    const per = BATCH / PS; let pages: number[] = [];
    for (let i = 0; i < mem.length / PS; i++) {
      if (isZeroPage(mem, i, PS)) continue;
      pages.push(i);
      if (pages.length >= per) { await c.send('MIG_PAGES', { mid: 'x' }, encodePageBatchParts(mem, PS, pages)); pages = []; }
    }
    if (pages.length) await c.send('MIG_PAGES', { mid: 'x' }, encodePageBatchParts(mem, PS, pages));
    const r = await c.request('PING', {});
    const ms = performance.now() - t0; const u = process.cpuUsage(u0);
    console.log(`send ${MB} MB in ${ms.toFixed(0)} ms = ${(MB * 1.048576 / ms * 1000).toFixed(0)} MB/s; sender cpu ${((u.user + u.system) / 1000).toFixed(0)} ms`);
  }
  process.exit(0);
} else {
  const mem = new Uint8Array(new WebAssembly.Memory({ initial: (MB << 20) >> 16, maximum: 65536, shared: true }).buffer);
  await prefault(mem, mem.length);
  let u0 = process.cpuUsage();
  const s = await listen('127.0.0.1', 0, { key, node: 'd', onConnection: (conn) => {
    conn.sinkBodies('MIG_PAGES', (_h, n) => new PageBatchWriter(mem, PS, mem.length / PS, n));
    let n = 0, t0 = 0;
    conn.on('MIG_PAGES', (m) => { (m.sunk as PageBatchWriter).end(); if (n === 0) { t0 = performance.now(); u0 = process.cpuUsage(); } if (++n === (MB << 20) / BATCH) { const u = process.cpuUsage(u0); console.log(`  receiver: ${(performance.now() - t0).toFixed(0)} ms, cpu user ${(u.user / 1000).toFixed(0)} sys ${(u.system / 1000).toFixed(0)} ms`); n = 0; } });
    conn.handle('PING', () => { const u = process.cpuUsage(u0); u0 = process.cpuUsage(); console.log(`  receiver cpu since last ${((u.user + u.system) / 1000).toFixed(0)} ms`); return {}; });
  } });
  const child = fork(HERE, ['--send', String(s.port)], { execArgv: ['--import', 'tsx'] });
  child.on('exit', () => process.exit(0));
}
