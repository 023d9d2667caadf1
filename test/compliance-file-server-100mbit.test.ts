// Compliance (test/suites/compliance.ts): the file-server algorithms over a link shaped to 100 Mb/s.
import { complianceSuite } from './suites/compliance.ts';

complianceSuite('file-server', '100mbit');
