// Frozen anywhere, output unchanged (test/suites/migratable.ts): the workloads of the 'memory' group.
import { migratableSuite } from './suites/migratable.ts';

migratableSuite('memory');
