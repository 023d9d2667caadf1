// Compliance (test/suites/compliance.ts): the faulting algorithms (from the source) over a link shaped to 100 Mb/s.
import { complianceSuite } from './suites/compliance.ts';

complianceSuite('faulting', '100mbit');
