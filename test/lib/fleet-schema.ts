// The /fleet JSON (and `edgemesh fleet --json`) schema 1, key by key, as README "Fleet" documents it. A change here is
// a change of the documented schema: bump FLEET_SCHEMA and the README with it.
import assert from 'node:assert/strict';

const keys = (o: unknown) => Object.keys(o as object).sort();
const TOP = ['generatedAt', 'groups', 'healthy', 'links', 'matrix', 'nodes', 'schema', 'server', 'summary', 'warnings', 'warningsOmitted'];
const SUMMARY = ['down', 'groups', 'links', 'nat', 'noReport', 'notReady', 'nodes', 'ready', 'relayShare', 'up', 'versions'];
const NODE = ['group', 'nat', 'node', 'notReady', 'peers', 'ready', 'reportAgeSeconds', 'state', 'version'];
const LINK = ['a', 'b', 'bytes', 'groups', 'path', 'reportedBy', 'rttMs'];
const CELL = ['a', 'b', 'connecting', 'direct', 'links', 'medianRttMs', 'mixed', 'path', 'relay'];
const WARNING_REQUIRED = ['kind', 'message', 'severity'];
const WARNING_OPTIONAL = ['group', 'node', 'nodes', 'peer', 'service'];
const PATHS = ['direct', 'relay', 'mixed', 'connecting'];

export function assertFleetSchema(j: Record<string, unknown>): void {
  assert.deepEqual(keys(j), [...TOP].sort());
  assert.equal(j.schema, 1);
  assert.equal(typeof j.healthy, 'boolean');
  assert.ok(!Number.isNaN(Date.parse(String(j.generatedAt))));
  assert.deepEqual(keys(j.server), ['agentsConnected', 'listen']);
  const s = j.summary as Record<string, unknown>;
  assert.deepEqual(keys(s), [...SUMMARY].sort());
  assert.deepEqual(keys(s.links), [...PATHS].sort());
  assert.deepEqual(keys(s.nat), ['cone', 'open', 'symmetric', 'unknown']);
  for (const v of s.versions as object[]) assert.deepEqual(keys(v), ['nodes', 'version']);
  for (const g of j.groups as object[]) assert.deepEqual(keys(g), ['name', 'nodes']);
  for (const n of j.nodes as Record<string, unknown>[]) {
    assert.deepEqual(keys(n), [...NODE].sort());
    assert.ok(['up', 'down', 'no-report'].includes(String(n.state)));
  }
  for (const l of j.links as Record<string, unknown>[]) {
    assert.deepEqual(keys(l), [...LINK].sort());
    assert.ok(PATHS.includes(String(l.path)));
  }
  for (const c of j.matrix as Record<string, unknown>[]) {
    assert.deepEqual(keys(c), [...CELL].sort());
    assert.ok(PATHS.includes(String(c.path)));
  }
  for (const w of j.warnings as Record<string, unknown>[]) {
    for (const k of WARNING_REQUIRED) assert.ok(k in w, `warning without ${k}`);
    for (const k of Object.keys(w)) assert.ok(WARNING_REQUIRED.includes(k) || WARNING_OPTIONAL.includes(k), `warning key ${k}`);
    assert.ok(['error', 'warning', 'info'].includes(String(w.severity)));
  }
  assert.equal(typeof j.warningsOmitted, 'number');
}
