// Compliance (test/suites/compliance.ts): the copying algorithms over a link shaped to 100 Mb/s.
import { complianceSuite } from './suites/compliance.ts';

complianceSuite('copying', '100mbit');
