// A raw TCP client for protocol tests: send bytes, half-close, collect the reply.
import net from 'node:net';

/** Send bytes on a fresh socket, half-close, collect everything until the server closes (or the timeout). */
export function rawExchange(host: string, port: number, bytes: Uint8Array, timeoutMs = 5000): Promise<{ data: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = net.connect({ host, port, allowHalfOpen: true });
    const timer = setTimeout(() => { s.destroy(); resolve({ data: Buffer.concat(chunks), closed: false }); }, timeoutMs);
    s.on('data', (c) => chunks.push(c));
    s.on('error', () => {});
    s.on('close', () => { clearTimeout(timer); resolve({ data: Buffer.concat(chunks), closed: true }); });
    s.on('connect', () => { s.write(bytes, () => s.end()); });
  });
}
