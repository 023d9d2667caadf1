// Compliance (test/suites/compliance.ts): the faulting algorithms (from the source) over loopback.
import { complianceSuite } from './suites/compliance.ts';

complianceSuite('faulting', 'loopback');
