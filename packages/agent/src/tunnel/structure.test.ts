// The tunnel's shape, checked: no import circle among its modules (type-only imports count too: a circle of types
// is still two modules that cannot be understood apart), and no file over MAX_LINES.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const DIR = import.meta.dirname;
/** ~400 lines: a module one can hold in one's head. */
const MAX_LINES = 400;

function modules(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const f of readdirSync(DIR).filter((x) => x.endsWith('.ts') && !x.endsWith('.test.ts') && !x.endsWith('.d.ts'))) {
    const text = readFileSync(join(DIR, f), 'utf8');
    const deps = [...text.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+['"](\.\/[^'"]+)['"]/gm)].map((m) => resolve(DIR, m[1]));
    graph.set(resolve(DIR, f), deps.filter((d) => d.startsWith(DIR)));
  }
  return graph;
}

test('no import circle in tunnel/ (type imports included)', () => {
  const graph = modules();
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (m: string): void => {
    if (state.get(m) === 'done') return;
    if (state.get(m) === 'open') assert.fail(`import circle: ${[...stack.slice(stack.indexOf(m)), m].map((x) => x.slice(DIR.length + 1)).join(' -> ')}`);
    state.set(m, 'open');
    stack.push(m);
    for (const d of graph.get(m) ?? []) visit(d);
    stack.pop();
    state.set(m, 'done');
  };
  for (const m of graph.keys()) visit(m);
  assert.ok(graph.size > 10, 'the check saw the modules');
});

test(`no tunnel/ module over ${MAX_LINES} lines`, () => {
  for (const f of readdirSync(DIR).filter((x) => x.endsWith('.ts') && !x.endsWith('.test.ts'))) {
    const n = readFileSync(join(DIR, f), 'utf8').split('\n').length;
    assert.ok(n <= MAX_LINES, `${f} has ${n} lines`);
  }
});
