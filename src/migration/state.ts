// The migration state machine (QEMU's vocabulary). Every change goes through
// compare-and-set: a transition succeeds only from the state the caller
// expects, so a cancel racing a completion cannot undo it. Each change is
// logged and emitted as an event.
//
//   setup ──> active ──> completed
//     │         │ └────> postcopy-active ──> completed
//     └─────────┴──────> failed | cancelled       (postcopy-active -> failed only)
import { EventEmitter } from 'node:events';

export type MigrationState = 'setup' | 'active' | 'postcopy-active' | 'completed' | 'failed' | 'cancelled';

/** Allowed transitions; everything else is refused. */
const NEXT: Record<MigrationState, readonly MigrationState[]> = {
  setup: ['active', 'failed', 'cancelled'],
  active: ['postcopy-active', 'completed', 'failed', 'cancelled'],
  'postcopy-active': ['completed', 'failed'],
  completed: [],
  failed: [],
  cancelled: [],
};

export const FINAL_STATES: readonly MigrationState[] = ['completed', 'failed', 'cancelled'];

export interface StateChange { id: string; from: MigrationState; to: MigrationState; at: number }

export class MigrationStateMachine extends EventEmitter {
  private current: MigrationState = 'setup';
  readonly history: StateChange[] = [];

  constructor(readonly id: string, private readonly log?: (m: string) => void) { super(); }

  get state(): MigrationState { return this.current; }
  get final(): boolean { return FINAL_STATES.includes(this.current); }

  /** Move from `from` to `to`; false (and nothing happens) if the state is not `from` or the edge is not allowed. */
  cas(from: MigrationState, to: MigrationState): boolean {
    if (this.current !== from || !NEXT[from].includes(to)) return false;
    this.current = to;
    const change: StateChange = { id: this.id, from, to, at: Date.now() };
    this.history.push(change);
    this.log?.(`migration ${this.id}: ${from} -> ${to}`);
    this.emit('state', change);
    return true;
  }
}
