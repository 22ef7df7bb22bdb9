#!/usr/bin/env node
import { cli } from '../src/cli.ts';
await cli(process.argv.slice(2));
