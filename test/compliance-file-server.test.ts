// Compliance (test/suites/compliance.ts): the file-server algorithms over loopback.
import { complianceSuite } from './suites/compliance.ts';

complianceSuite('file-server', 'loopback');
