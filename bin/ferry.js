#!/usr/bin/env node
// The ferry command: TypeScript sources run through tsx's loader.
import v8 from 'node:v8';
// Compile every wasm function with the optimizing tier up front: a hot loop in a
// function called once would otherwise stay on the baseline tier, and lazy tier-up
// would stall the first freezes (tens of ms). FERRY_V8_FLAGS overrides.
for (const flag of (process.env.FERRY_V8_FLAGS ?? '--no-liftoff --no-wasm-lazy-compilation').split(/\s+/).filter(Boolean))
  v8.setFlagsFromString(flag);
import { register } from 'tsx/esm/api';
register();
const { main } = await import('../src/cli/main.ts');
await main(process.argv.slice(2));
