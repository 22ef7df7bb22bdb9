#!/usr/bin/env node
// NODE_ENV=production: the bundle in dist/ (npm run build); otherwise the TypeScript sources (packages/common/bin/entry.js).
import { start } from '@edgemesh/common/entry.js';
await start({ dist: new URL('../dist/edgemesh.cjs', import.meta.url), src: new URL('../src/cli.ts', import.meta.url), exportName: 'cli' });
