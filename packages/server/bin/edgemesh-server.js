#!/usr/bin/env node
// NODE_ENV=production: the bundle in dist/ (npm run build); otherwise the TypeScript sources. V8 sized for the memory
// limit. See packages/common/bin/entry.js.
import { start } from '@edgemesh/common/entry.js';
await start({ dist: new URL('../dist/edgemesh-server.cjs', import.meta.url), src: new URL('../src/main.ts', import.meta.url), size: true });
