// The algorithms ferry implements, by their `--algorithm` names.
import { FerryError } from '../errors.ts';
import type { Strategy } from './strategy.ts';
import { TotalCopy } from './total-copy.ts';
import { PreCopy } from './pre-copy.ts';
import { PostCopy } from './post-copy.ts';
import { AssistedPostCopy } from './assisted-post-copy.ts';

const STRATEGIES: Record<string, () => Strategy> = {
  'total-copy': () => new TotalCopy(),
  'pre-copy': () => new PreCopy(),
  'post-copy': () => new PostCopy(),
  'assisted-post-copy': () => new AssistedPostCopy(),
};

export const ALGORITHMS = Object.keys(STRATEGIES);

export function strategyFor(name: string): Strategy {
  const make = STRATEGIES[name];
  if (!make) throw new FerryError('bad-argument', `unknown algorithm '${name}' (known: ${ALGORITHMS.join(', ')})`);
  return make();
}

export { Migration, type MigrationChannel, type MigrationOptions, type SourceProcess, type Progress } from './engine.ts';
export type { MigrationMetrics } from './metrics.ts';
