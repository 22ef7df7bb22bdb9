// End-to-end tests of the network-namespace lab: real namespaces, real NAT rules, a probe process per host.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { buildLab, cleanupStale, FAULT_CHAIN, pidsInNamespaces, Probe, STATE_DIR, type Lab } from '../lib/netlab.ts';
import { dropCount, UDP_DROP_RULE, waitForDrop } from '../lib/drops.ts';

/** Bounded wait for a datagram that must arrive (generous: a busy 2-core machine). Negative checks never wait for
 *  silence: they wait for a marker sent after the traffic under test, or for a DROP rule to count it. */
const ARRIVE_MS = 10_000;

function netnsList(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map((l) => l.split(' ')[0]).filter(Boolean);
}

function labNamespaces(prefix: string): string[] {
  return netnsList().filter((ns) => ns.startsWith(`${prefix}-`));
}

const hostPort = (addr: string | undefined) => {
  assert.ok(addr, 'no reply from the reflector');
  const [ip, port] = addr.split(':');
  return { ip, port: Number(port) };
};

describe('netlab', () => {
  let lab: Lab;
  const probes = new Map<string, Probe>();
  const p = (name: string) => probes.get(name)!;
  const ip = (name: string) => lab.host(name).ip;

  before(async () => {
    lab = await buildLab({
      publicHosts: ['pub1', 'pub2'],
      sites: [
        { name: 'open', nat: 'none', hosts: ['nh'] },
        { name: 'fc', nat: 'full-cone', hosts: ['fh'] },
        { name: 'rc', nat: 'restricted-cone', hosts: ['rh'] },
        { name: 'pr', nat: 'port-restricted', hosts: ['ph1', 'ph2'] },
        { name: 'sy', nat: 'symmetric', hosts: ['sh'] },
        { name: 'ub', nat: 'udp-blocked', hosts: ['uh'] },
        { name: 'cg', nat: 'cgnat', hosts: ['ch'] },
      ],
    });
    await Promise.all(lab.hosts().map(async (h) => probes.set(h.name, await Probe.start(lab, h.name))));
    // Public reflectors: two ports on pub1, one on pub2; a TCP reflector on pub1; a plain sender socket on each.
    await Promise.all([
      p('pub1').udpBind(7000, { reflect: true }), p('pub1').udpBind(7001, { reflect: true }),
      p('pub2').udpBind(7000, { reflect: true }), p('pub1').tcpListen(8000),
      p('pub1').udpBind(7005), p('pub2').udpBind(7005),
    ]);
  });

  after(async () => {
    const prefix = lab?.prefix;
    await lab?.destroy();
    if (prefix) assert.deepEqual(labNamespaces(prefix), []);
  });

  test('address plan: public hosts on 203.0.113.0/24, site hosts on 198.18.<i>.0/24 behind 198.18.<i>.1', () => {
    assert.equal(ip('pub1'), '203.0.113.10');
    assert.equal(ip('pub2'), '203.0.113.11');
    assert.equal(lab.host('ph1').ip, '198.18.4.10');
    assert.equal(lab.host('ph2').ip, '198.18.4.11');
    assert.equal(lab.host('ph2').gateway, '198.18.4.1');
    assert.equal(lab.host('ph2').site, 'pr');
    const pr = lab.router('pr');
    assert.deepEqual([pr.wanIp, pr.lanIp, pr.publicIp], ['203.0.113.104', '198.18.4.1', '203.0.113.104']);
    const cg = lab.router('cg');
    assert.equal(cg.wanIp, '100.64.7.2');
    assert.equal(cg.publicIp, '203.0.113.107');
    assert.deepEqual(cg.carrier, { ns: `${lab.prefix}-c-cg`, wanIp: '203.0.113.107', lanIp: '100.64.7.1' });
    for (const ns of lab.namespaces) assert.ok(ns.startsWith(`${lab.prefix}-`));
    assert.deepEqual(labNamespaces(lab.prefix).sort(), [...lab.namespaces].sort());
  });

  test('exec runs in the host namespace and returns the exit code', async () => {
    const r = await lab.exec('pub1', 'ip', ['-o', '-4', 'addr', 'show']);
    assert.equal(r.exitCode, 0);
    assert.match(r.stdout, /inet 203\.0\.113\.10\/24/);
    assert.doesNotMatch(r.stdout, /198\.18\./);
    assert.equal((await lab.exec('ph1', 'sh', ['-c', 'exit 3'])).exitCode, 3);
    await assert.rejects(lab.exec('ph1', 'sh', ['-c', 'exit 4'], { reject: true }), /exited 4/);
    const lo = await lab.exec('sh', 'ip', ['-o', 'link', 'show', 'dev', 'lo']);
    assert.match(lo.stdout, /UP/);
  });

  test('port-restricted: one mapped port for every destination', async () => {
    const port = await p('ph1').udpBind(40001);
    const seen = await Promise.all([
      p('ph1').mappedAddress(port, ip('pub1'), 7000, ARRIVE_MS),
      p('ph1').mappedAddress(port, ip('pub1'), 7001, ARRIVE_MS),
      p('ph1').mappedAddress(port, ip('pub2'), 7000, ARRIVE_MS),
    ]);
    const mapped = seen.map(hostPort);
    assert.equal(new Set(seen).size, 1, `mappings differ: ${seen.join(', ')}`);
    assert.equal(mapped[0].ip, lab.router('pr').publicIp);
    // The listeners themselves observed that source too.
    assert.ok(p('pub2').udpReceived(7000).some((e) => `${e.from}:${e.fromPort}` === seen[0]));
  });

  test('symmetric: a different mapped port per destination', async () => {
    const port = await p('sh').udpBind(40002);
    const seen = await Promise.all([
      p('sh').mappedAddress(port, ip('pub1'), 7000, ARRIVE_MS),
      p('sh').mappedAddress(port, ip('pub1'), 7001, ARRIVE_MS),
      p('sh').mappedAddress(port, ip('pub2'), 7000, ARRIVE_MS),
    ]);
    const mapped = seen.map(hostPort);
    for (const m of mapped) assert.equal(m.ip, lab.router('sy').publicIp);
    assert.ok(new Set(mapped.map((m) => m.port)).size >= 2, `same port for every destination: ${seen.join(', ')}`);
  });

  test('inbound filtering per NAT type; unsolicited UDP never reaches a NATed host', async () => {
    // Each host opens a mapping towards pub1:7000, then pub1 (other port) and pub2 send to the mapped address.
    const cases = [
      { host: 'ph1', site: 'pr', fromPub1OtherPort: false, fromPub2: false },
      { host: 'rh', site: 'rc', fromPub1OtherPort: true, fromPub2: false },
      { host: 'fh', site: 'fc', fromPub1OtherPort: true, fromPub2: true },
      { host: 'sh', site: 'sy', fromPub1OtherPort: false, fromPub2: false },
      { host: 'ch', site: 'cg', fromPub1OtherPort: false, fromPub2: false },
    ];
    const local = 40010;
    const mapped = await Promise.all(cases.map(async (c) => {
      await p(c.host).udpBind(local);
      const m = hostPort(await p(c.host).mappedAddress(local, ip('pub1'), 7000, ARRIVE_MS));
      assert.equal(m.ip, lab.router(c.site).publicIp, `${c.host}: mapped ip`);
      return m;
    }));
    // Unsolicited: ph2 listens but never sent anything.
    await p('ph2').udpBind(local);
    await Promise.all(cases.flatMap((c, i) => [
      p('pub1').udpSend(7005, mapped[i].ip, mapped[i].port, `other-port ${c.host}`),
      p('pub2').udpSend(7005, mapped[i].ip, mapped[i].port, `other-host ${c.host}`),
    ]));
    await p('pub2').udpSend(7005, lab.router('pr').publicIp, local, 'unsolicited ph2');
    // Markers after the traffic under test, on paths every NAT type lets through, to the same sockets: the exact reply
    // from pub1:7000 (the mapping's own destination) to each mapped address, and for ph2 the reflection of its own
    // first datagram. A datagram that got through arrives before its host's marker.
    await Promise.all(cases.map((c, i) => p('pub1').udpSend(7000, mapped[i].ip, mapped[i].port, `marker ${c.host}`)));
    for (const c of cases) assert.ok(await p(c.host).waitUdp(local, (e) => e.data === `marker ${c.host}`, ARRIVE_MS), `${c.host}: the exact reply (marker) did not arrive`);
    assert.ok(await p('ph2').mappedAddress(local, ip('pub1'), 7000, ARRIVE_MS), 'ph2: its own reflection (marker) did not arrive');
    for (const c of cases) {
      const got = p(c.host).udpReceived(local).map((e) => e.data);
      assert.equal(got.includes(`other-port ${c.host}`), c.fromPub1OtherPort, `${c.host}: from pub1 other port`);
      assert.equal(got.includes(`other-host ${c.host}`), c.fromPub2, `${c.host}: from pub2`);
    }
    assert.deepEqual(p('ph2').udpReceived(local).filter((e) => !e.data.startsWith('seen ')), [], 'ph2 got an unsolicited datagram');
  });

  test('udp-blocked: UDP does not leave the site, TCP does (masqueraded)', async () => {
    const port = await p('uh').udpBind(40020);
    // The router's udp-blocked rule counts the datagram as dropped: from then on it cannot arrive anywhere.
    const before = await dropCount(lab, 'ub', 'FORWARD', UDP_DROP_RULE);
    await p('uh').udpSend(port, ip('pub1'), 7000, 'must not leave');
    await waitForDrop(lab, 'ub', 'FORWARD', before, ARRIVE_MS, UDP_DROP_RULE);
    assert.deepEqual(p('pub1').udpReceived(7000).filter((e) => e.from === lab.router('ub').publicIp || e.data === 'must not leave'), []);
    assert.deepEqual(p('uh').udpReceived(port), [], 'no reflection came back');
    const seen = await p('uh').tcpConnect(ip('pub1'), 8000, ARRIVE_MS);
    assert.match(seen, new RegExp(`^seen ${lab.router('ub').publicIp.replaceAll('.', '\\.')}:\\d+$`));
  });

  test('hosts on the same site reach each other by LAN address, without NAT', async () => {
    await p('ph2').udpBind(9000, { reflect: true });
    const port = await p('ph1').udpBind(40030);
    assert.equal(await p('ph1').mappedAddress(port, ip('ph2'), 9000, ARRIVE_MS), `${ip('ph1')}:${port}`);
  });

  test("site 'none': routed without NAT, reachable from the public network", async () => {
    await p('nh').udpBind(9001, { reflect: true });
    assert.equal(await p('pub1').mappedAddress(7005, ip('nh'), 9001, ARRIVE_MS), `${ip('pub1')}:7005`);
    const port = await p('nh').udpBind(40040);
    assert.equal(await p('nh').mappedAddress(port, ip('pub2'), 7000, ARRIVE_MS), `${ip('nh')}:${port}`);
    // A NATed host reaches it too, through both NATs' routing.
    const php = await p('ph1').udpBind(40041);
    assert.equal(hostPort(await p('ph1').mappedAddress(php, ip('nh'), 9001, ARRIVE_MS)).ip, lab.router('pr').publicIp);
  });

  test('blackhole drops UDP between two addresses on a router until removed', async () => {
    const port = await p('ph1').udpBind(40050);
    assert.ok(await p('ph1').mappedAddress(port, ip('pub1'), 7000, ARRIVE_MS));
    const fault = await lab.blackhole('pr', { src: ip('ph1'), dst: ip('pub1'), proto: 'udp' });
    const dropped = await dropCount(lab, 'pr', FAULT_CHAIN);
    await p('ph1').udpSend(port, ip('pub1'), 7000, 'into the blackhole');
    await waitForDrop(lab, 'pr', FAULT_CHAIN, dropped, ARRIVE_MS);
    assert.deepEqual(p('pub1').udpReceived(7000).filter((e) => e.data === 'into the blackhole'), []);
    assert.deepEqual(p('ph1').udpReceived(port).filter((e) => e.data.endsWith(' into the blackhole')), [], 'no reflection came back');
    // Other destinations are unaffected.
    assert.ok(await p('ph1').mappedAddress(port, ip('pub2'), 7000, ARRIVE_MS));
    await lab.unblackhole(fault);
    await lab.unblackhole(fault); // idempotent
    assert.ok(await p('ph1').mappedAddress(port, ip('pub1'), 7000, ARRIVE_MS));
    // On a host: inbound only, one direction.
    const f2 = await lab.blackhole('pub2', { src: ip('pub1'), proto: 'udp', bidirectional: false });
    const droppedOnHost = await dropCount(lab, 'pub2', FAULT_CHAIN);
    await p('pub1').udpSend(7005, ip('pub2'), 7000, 'through host fault');
    await waitForDrop(lab, 'pub2', FAULT_CHAIN, droppedOnHost, ARRIVE_MS);
    assert.deepEqual(p('pub2').udpReceived(7000).filter((e) => e.data === 'through host fault'), []);
    await f2.remove();
    await p('pub1').udpSend(7005, ip('pub2'), 7000, 'after host fault');
    assert.ok(await p('pub2').waitUdp(7000, (e) => e.data === 'after host fault', ARRIVE_MS));
  });

  test('flushConntrack empties the router tables (both layers for cgnat)', async () => {
    const port = await p('ch').udpBind(40060);
    assert.ok(await p('ch').mappedAddress(port, ip('pub1'), 7000, ARRIVE_MS));
    const count = async (ns: string) => Number((await lab.exec({ ns }, 'conntrack', ['-C'], { reject: true })).stdout.trim());
    const cg = lab.router('cg');
    assert.ok((await count(cg.ns)) > 0);
    assert.ok((await count(cg.carrier!.ns)) > 0);
    await lab.flushConntrack('cg');
    assert.equal(await count(cg.ns), 0);
    assert.equal(await count(cg.carrier!.ns), 0);
  });

  test('setResolvConf is seen as /etc/resolv.conf in that namespace only', async () => {
    lab.setResolvConf('ph1', '198.18.4.53', ['svc.cluster.local']);
    const r = await lab.exec('ph1', 'cat', ['/etc/resolv.conf'], { reject: true });
    assert.equal(r.stdout, 'search svc.cluster.local\nnameserver 198.18.4.53');
    const other = await lab.exec('ph2', 'cat', ['/etc/resolv.conf']);
    assert.doesNotMatch(other.stdout, /198\.18\.4\.53/);
    assert.ok(existsSync(`/etc/netns/${lab.host('ph1').ns}/resolv.conf`));
  });
});

describe('netlab lifecycle', () => {
  test('destroy kills spawned processes, removes namespaces and netns dirs, and is idempotent', async () => {
    const lab = await buildLab({ publicHosts: ['p'], sites: [{ name: 's', nat: 'port-restricted', hosts: ['h'] }] });
    try {
      const child = lab.spawn('h', 'sleep', ['60'], { stdio: 'ignore' });
      const exited = new Promise((r) => child.once('exit', r));
      lab.setResolvConf('h', '198.18.1.1');
      assert.equal(labNamespaces(lab.prefix).length, lab.namespaces.length);
      await lab.destroy();
      await exited;
      assert.deepEqual(labNamespaces(lab.prefix), []);
      assert.equal(existsSync(`/etc/netns/${lab.host('h').ns}`), false);
      assert.equal(existsSync(`${STATE_DIR}/${lab.prefix}.json`), false);
      await lab.destroy();
      await assert.rejects(lab.exec('h', 'true'), /destroyed/);
    } finally {
      await lab.destroy();
    }
  });

  // A child process builds a lab, starts a sleeper in it, and then dies; `how` decides whether it can clean up.
  async function crashChild(how: 'SIGKILL' | 'SIGTERM'): Promise<{ prefix: string; sleeper: number }> {
    const lib = new URL('../lib/netlab.ts', import.meta.url).href;
    const code = `
      const { buildLab } = await import(${JSON.stringify(lib)});
      const lab = await buildLab({ publicHosts: ['p'], sites: [{ name: 's', nat: 'symmetric', hosts: ['h'] }] });
      const c = lab.spawn('h', 'sleep', ['60'], { stdio: 'ignore' });
      console.log(lab.prefix + ' ' + c.pid);
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((resolve, reject) => {
      child.stdout.once('data', (d) => resolve(String(d).trim()));
      child.once('exit', (c) => reject(new Error(`child exited ${c}`)));
    });
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(how);
    await exited;
    const [prefix, pid] = line.split(' ');
    return { prefix, sleeper: Number(pid) };
  }

  /** Running (not gone, not a zombie waiting for its reaper), polled for a short while when expected dead. */
  async function runningAfterKill(pid: number): Promise<boolean> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      let state: string | undefined;
      try {
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      } catch { /* gone */ }
      if (state === undefined || state === 'Z') return false;
      if (Date.now() > deadline) return true;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  test('SIGTERM: the exit hook tears the lab down', async () => {
    const { prefix, sleeper } = await crashChild('SIGTERM');
    try {
      assert.deepEqual(labNamespaces(prefix), []);
      assert.equal(existsSync(`${STATE_DIR}/${prefix}.json`), false);
      assert.equal(await runningAfterKill(sleeper), false);
    } finally {
      await cleanupStale(`${prefix}-`);
    }
  });

  test('SIGKILL leaves the lab behind; cleanupStale removes it and what ran in it, never a live lab', async () => {
    const { prefix, sleeper } = await crashChild('SIGKILL');
    const live = await buildLab({ publicHosts: ['q'], sites: [] });
    try {
      assert.equal(labNamespaces(prefix).length, 4);
      assert.deepEqual(pidsInNamespaces([`${prefix}-h-h`]), [sleeper]);
      const removed = await cleanupStale(new RegExp(`^(${prefix}|${live.prefix})-`));
      assert.deepEqual(removed.sort(), [`${prefix}-h-h`, `${prefix}-h-p`, `${prefix}-r-s`, `${prefix}-wan`]);
      assert.deepEqual(labNamespaces(prefix), []);
      assert.equal(await runningAfterKill(sleeper), false);
      assert.equal(existsSync(`${STATE_DIR}/${prefix}.json`), false);
      assert.deepEqual(labNamespaces(live.prefix).sort(), [...live.namespaces].sort());
      assert.deepEqual(await cleanupStale(`${prefix}-`), []);
    } finally {
      await live.destroy();
      await cleanupStale(`${prefix}-`);
    }
  });
});
