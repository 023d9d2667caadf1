// The algorithms ferry implements, by their `--algorithm` names.
import { FerryError } from '../errors.ts';
import type { Strategy } from './strategy.ts';
import { TotalCopy } from './total-copy.ts';
import { PreCopy } from './pre-copy.ts';
import { PostCopy } from './post-copy.ts';
import { QueuedPreCopy } from './queued-pre-copy.ts';
import { DemandPaging, DEMAND_PAGING_VARIANTS } from './demand-paging.ts';
import { AssistedPostCopy } from './assisted-post-copy.ts';
import { Flushing } from './flushing.ts';
import { FreezeFree } from './freeze-free.ts';

const STRATEGIES: Record<string, (variant?: string) => Strategy> = {
  'total-copy': () => new TotalCopy(),
  'pre-copy': () => new PreCopy(),
  'post-copy': () => new PostCopy(),
  'queued-pre-copy': () => new QueuedPreCopy(),
  'demand-paging': (variant) => new DemandPaging(variant),
  'assisted-post-copy': () => new AssistedPostCopy(),
  'flushing': () => new Flushing(),
  'freeze-free': () => new FreezeFree(),
};

export const ALGORITHMS = Object.keys(STRATEGIES);

/** Algorithms with variants (`--variant`); the first is the default. */
export const VARIANTS: Record<string, readonly string[]> = {
  'demand-paging': DEMAND_PAGING_VARIANTS,
};

export function strategyFor(name: string, variant?: string): Strategy {
  const make = STRATEGIES[name];
  if (!make) throw new FerryError('bad-argument', `unknown algorithm '${name}' (known: ${ALGORITHMS.join(', ')})`);
  if (variant !== undefined && !VARIANTS[name]) throw new FerryError('bad-argument', `${name} has no variants (--variant is for ${Object.keys(VARIANTS).join(', ')})`);
  return make(variant);
}

export { Migration, type FileServerLink, type MigrationChannel, type MigrationOptions, type SourceProcess, type Progress } from './engine.ts';
export type { MigrationMetrics } from './metrics.ts';
