// Keeps charts/edgemesh/values.schema.json's `definitions.agentConfig` / `definitions.serverConfig` equal to the
// product's own config schemas (zod, packages/common/src/config.ts), so `helm install` rejects an unknown or
// mistyped config key before any pod starts. The rest of values.schema.json is written by hand.
// `node scripts/chart-schema.ts` rewrites the two definitions; `--check` exits 1 when they are stale.
// Note: zod refinements (HOST:PORT, CIDR shapes) have no JSON Schema form; the binaries still check those at start.
import { readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { z } from 'zod';
import { agentSchema, serverSchema } from '../packages/common/src/config.ts';

export const VALUES_SCHEMA = resolve(import.meta.dirname, '../charts/edgemesh/values.schema.json');

function toDefinition(schema: z.ZodType): Record<string, unknown> {
  // io 'input': keys with defaults are optional, as in a config file. draft-7 is what every Helm 3 release accepts.
  const json = z.toJSONSchema(schema, { target: 'draft-7', io: 'input' }) as Record<string, unknown>;
  delete json.$schema;
  return json;
}

export function configDefinitions(): { agentConfig: Record<string, unknown>; serverConfig: Record<string, unknown> } {
  return { agentConfig: toDefinition(agentSchema), serverConfig: toDefinition(serverSchema) };
}

export function renderValuesSchema(current: Record<string, unknown>): string {
  const defs = (current.definitions ?? {}) as Record<string, unknown>;
  return JSON.stringify({ ...current, definitions: { ...defs, ...configDefinitions() } }, null, 2) + '\n';
}

if (import.meta.main) {
  const text = readFileSync(VALUES_SCHEMA, 'utf8');
  const next = renderValuesSchema(JSON.parse(text) as Record<string, unknown>);
  if (process.argv.includes('--check')) {
    if (next !== text) {
      process.stderr.write(`${VALUES_SCHEMA} is stale: run node scripts/chart-schema.ts\n`);
      process.exit(1);
    }
  } else {
    writeFileSync(VALUES_SCHEMA, next);
  }
}
