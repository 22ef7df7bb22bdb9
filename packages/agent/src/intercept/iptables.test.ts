// IptablesInterceptor against fake iptables binaries (shell scripts keeping a nat table in a file), so the sync,
// read-back and readiness logic runs without root: what it applies, when it re-asserts, when it is healthy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { createLogger } from '@edgemesh/common/log';
import { IptablesInterceptor } from './iptables.ts';
import type { InterceptRule } from './rules.ts';

const log = createLogger('silent', 'test');
const RULES: InterceptRule[] = [{ ip: '10.96.0.10', protocol: 'tcp', port: 80, comment: 'default/web:80', toIP: '169.254.96.16', toPort: 40001 }];
const EMPTY_NAT = '*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n';

/** Fake iptables-save / iptables-restore: restore turns a batch into the table `save` prints; `fail` makes it fail. */
function fakeIptables() {
  const d = mkdtempSync(join(tmpdir(), 'em-ipt-'));
  const script = (name: string, body: string) => {
    const p = join(d, name);
    writeFileSync(p, `#!/bin/sh\nD='${d}'\n${body}\n`);
    chmodSync(p, 0o755);
    return p;
  };
  const save = script('save', `cat "$D/state" 2>/dev/null || printf '${EMPTY_NAT.replace(/\n/g, '\\n')}'`);
  const restore = script('restore', [
    '[ -e "$D/fail" ] && { echo "iptables-restore: line 2 failed" >&2; exit 1; }',
    'cat > "$D/last"; echo x >> "$D/count"',
    '{ echo "*nat"; echo ":PREROUTING ACCEPT [0:0]"; echo ":OUTPUT ACCEPT [0:0]";',
    '  if ! grep -q "^-X EDGEMESH" "$D/last"; then echo ":EDGEMESH-SERVICES - [0:0]";',
    '    echo "-A PREROUTING -m comment --comment \\"edgemesh service interception\\" -j EDGEMESH-SERVICES";',
    '    echo "-A OUTPUT -m comment --comment \\"edgemesh service interception\\" -j EDGEMESH-SERVICES";',
    '    grep "^-A EDGEMESH-SERVICES" "$D/last"; fi; echo COMMIT; } > "$D/state"',
  ].join('\n'));
  const restores = () => (existsSync(join(d, 'count')) ? readFileSync(join(d, 'count'), 'utf8').split('\n').filter(Boolean).length : 0);
  return {
    d, restores,
    binaries: { iptables: join(d, 'iptables'), save, restore, backend: 'nft' as const },
    state: () => (existsSync(join(d, 'state')) ? readFileSync(join(d, 'state'), 'utf8') : EMPTY_NAT),
    setState: (t: string) => writeFileSync(join(d, 'state'), t),
    fail: (on: boolean) => (on ? writeFileSync(join(d, 'fail'), '') : rmSync(join(d, 'fail'), { force: true })),
    done: () => rmSync(d, { recursive: true, force: true }),
  };
}

async function until(what: string, fn: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('own: a change is applied at once and reported for its generation; a flush behind our back is re-asserted, and readiness is down only while it is not', async () => {
  const f = fakeIptables();
  const ic = new IptablesInterceptor({ log, registry: new Registry(), binaries: f.binaries, reassertMs: 100, minIntervalMs: 0 });
  try {
    await ic.start('own');
    assert.equal(ic.healthy(), false, 'nothing applied yet');
    const gen = ic.setDesired(RULES);
    await until('applied', () => ic.appliedFor(gen));
    assert.equal(ic.healthy(), true);
    assert.match(f.state(), /-A EDGEMESH-SERVICES -d 10\.96\.0\.10\/32 .*--to-destination 169\.254\.96\.16:40001/);
    // Periodic read-backs of an unchanged table write nothing.
    const n = f.restores();
    await new Promise((r) => setTimeout(r, 350));
    assert.equal(f.restores(), n, 'no re-apply while the kernel holds our rules');
    // Flushed by someone else, and iptables-restore failing meanwhile: not healthy until the rules are back.
    f.fail(true);
    f.setState(EMPTY_NAT);
    await until('found changed', () => !ic.healthy());
    f.fail(false);
    await until('re-asserted', () => ic.healthy(), 10_000);
    assert.match(f.state(), /--to-destination 169\.254\.96\.16:40001/);
    // A new desired state that fails to apply: the old rules are still in the kernel (healthy), the new generation is not.
    f.fail(true);
    const gen2 = ic.setDesired([...RULES, { ...RULES[0], port: 81, comment: 'default/web:81', toPort: 40002 }]);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(ic.appliedFor(gen2), false);
    assert.equal(ic.healthy(), true);
    f.fail(false);
    await until('applied after the retry', () => ic.appliedFor(gen2), 10_000);
  } finally {
    await ic.stop();
    assert.doesNotMatch(f.state(), /EDGEMESH/, 'stop removes everything');
    f.done();
  }
});

test('follow: only reads the kernel back (identical or not), never writes, leaves the rules on stop; claim applies ours', async () => {
  const f = fakeIptables();
  const owner = new IptablesInterceptor({ log, registry: new Registry(), binaries: f.binaries, minIntervalMs: 0 });
  await owner.start('own');
  const g0 = owner.setDesired(RULES);
  await until('owner applied', () => owner.appliedFor(g0));
  await owner.release();
  const table = f.state();
  const n = f.restores();

  const ic = new IptablesInterceptor({ log, registry: new Registry(), binaries: f.binaries, minIntervalMs: 0 });
  try {
    await ic.start('follow');
    const other = ic.setDesired([{ ...RULES[0], toPort: 40009 }]);
    assert.equal(await ic.check(), false, 'different listener port: not identical');
    assert.equal(ic.appliedFor(other), false);
    const same = ic.setDesired(RULES);
    assert.equal(await ic.check(), true, 'identical');
    assert.equal(ic.appliedFor(same), true);
    assert.equal(f.restores(), n, 'following writes nothing (no cleanup at start either)');
    await ic.claim();
    assert.equal(f.restores(), n + 1, 'claim applies (the same rules)');
    assert.equal(f.state(), table);
  } finally {
    await ic.stop();
    f.done();
  }

  const g = fakeIptables();
  const follower = new IptablesInterceptor({ log, registry: new Registry(), binaries: g.binaries, minIntervalMs: 0 });
  g.setState(table);
  await follower.start('follow');
  follower.setDesired(RULES);
  await follower.stop();
  assert.equal(g.state(), table, 'a follower that never claimed leaves the running agent\'s rules alone');
  g.done();
});
