// Compliance (test/suites/compliance.ts): the copying algorithms over loopback.
import { complianceSuite } from './suites/compliance.ts';

complianceSuite('copying', 'loopback');
