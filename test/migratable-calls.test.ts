// Frozen anywhere, output unchanged (test/suites/migratable.ts): the workloads of the 'calls' group.
import { migratableSuite } from './suites/migratable.ts';

migratableSuite('calls');
