// Writes the generic (top-level) part of yosys's share/ tree, which the
// YoWASP package keeps inside gen/resources-yosys.js (an ES module), into a
// directory. Used by index.ts (yosys workload setup).
// Usage: node extract-yosys-share.mjs <destdir>
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const dest = process.argv[2];
if (!dest) throw new Error('usage: extract-yosys-share.mjs <destdir>');
const require = createRequire(import.meta.url);
// The package only exports gen/bundle.js; resources-yosys.js sits next to it.
const bundle = require.resolve('@yowasp/yosys');
const r = await import(new URL('./resources-yosys.js', pathToFileURL(bundle)).href);
fs.mkdirSync(dest, { recursive: true });
for (const [name, v] of Object.entries(r.filesystem.share)) {
  if (typeof v === 'string' || v instanceof Uint8Array) fs.writeFileSync(path.join(dest, name), v);
}
