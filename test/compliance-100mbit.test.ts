// The compliance suite (compliance.test.ts) over a link shaped to 100 Mb/s, as a test file of
// its own so node:test runs it beside the loopback one.
process.env.FERRY_COMPLIANCE_LINKS = process.env.FERRY_COMPLIANCE_SLOW_LINKS ?? '100mbit';
await import('./compliance.test.ts');
