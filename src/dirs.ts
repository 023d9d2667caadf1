// Directories ferry makes for its data (a node's --data-dir, the compile cache).
//
// Why not mkdirSync(dir, { recursive: true }): for a path under /proc it never returns
// (mkdir says ENOENT, the parent exists, so it tries again for ever; seen on Node 20.20).
// Each missing level is made here instead, and a path that cannot be one says why.

import { mkdirSync, statSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { FerryError } from './errors.ts';

/** Make `dir` and its missing parents; `what` names it in errors ("data directory"). */
export function makeDir(dir: string, what: string): void {
  const missing: string[] = [];
  for (let d = resolve(dir); ; d = dirname(d)) {
    const st = statOf(d);
    if (st) {
      if (!st.isDirectory()) throw new FerryError('bad-argument', `cannot make ${what} ${dir}: ${d} is not a directory`);
      break;
    }
    missing.unshift(d);
    if (dirname(d) === d) break;
  }
  for (const d of missing) {
    try { mkdirSync(d); } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && statOf(d)?.isDirectory()) continue; // made meanwhile
      throw new FerryError('io', `cannot make ${what} ${dir}: ${(e as Error).message}`, { cause: e });
    }
  }
}

/** What is at `p`, or undefined if nothing is (ENOTDIR too: a parent is a file, found above). */
function statOf(p: string): Stats | undefined {
  try { return statSync(p, { throwIfNoEntry: false }); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
    throw new FerryError('io', `cannot look at ${p}: ${(e as Error).message}`, { cause: e });
  }
}
