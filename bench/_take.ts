import { encodePageBatch, PageBatchWriter } from '../src/memory/page-batch.ts';
const PS = 4096, MB = 512, BATCH = 1 << 20;
const mem = new Uint8Array(new WebAssembly.Memory({ initial: (MB << 20) >> 16, maximum: 65536, shared: true }).buffer);
const src = new Uint8Array(BATCH + 4096 * 3); for (let i = 0; i < src.length; i++) src[i] = i & 255 || 1;
for (let i = 0; i < mem.length; i += 4096) mem[i] = 0;
const per = BATCH / PS;
const bodies: Buffer[] = [];
for (let b = 0; b < 4; b++) bodies.push(encodePageBatch(src, PS, Array.from({ length: per }, (_, k) => k)));
for (const chunk of [16384, 65536, 16384]) {
  const t = performance.now();
  for (let b = 0; b < (MB << 20) / BATCH; b++) {
    const body = bodies[b & 3]!;
    // rewrite indices to point at batch b
    for (let k = 0; k < per; k++) body.writeUInt32LE(b * per + k, 8 + 4 * k);
    const w = new PageBatchWriter(mem, PS, mem.length / PS, body.length);
    for (let o = 0; o < body.length; o += chunk) w.write(body.subarray(o, Math.min(body.length, o + chunk)));
    w.end();
  }
  console.log('chunk', chunk, (performance.now() - t).toFixed(0), 'ms per 512 MB');
}
for (const chunk of [65536, 65536]) {
  const t = performance.now();
  for (let b = 0; b < (MB << 20) / BATCH; b++) {
    const body = bodies[b & 3]!;
    for (let k = 0; k < per; k++) body.writeUInt32LE(b * per + k, 8 + 4 * k);
    const w = new PageBatchWriter(mem, PS, mem.length / PS, body.length);
    for (let o = 0; o < body.length; o += chunk) { const c = Buffer.allocUnsafeSlow(Math.min(chunk, body.length - o)); body.copy(c, 0, o); w.write(c); }
    w.end();
  }
  console.log('fresh chunk', chunk, (performance.now() - t).toFixed(0), 'ms per 512 MB');
}
