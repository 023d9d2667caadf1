// Compliance (test/suites/compliance.ts): the faulting algorithms over loopback.
import { complianceSuite } from './suites/compliance.ts';

complianceSuite('faulting', 'loopback');
