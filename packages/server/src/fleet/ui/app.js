// The mesh map page (GET /ui on the server's admin port). Polls /fleet (same origin) and draws: groups as clusters,
// nodes, links coloured by path (hover: RTT and bytes), the group x group matrix and the warnings. Layout: d3-force
// (served by the same server); everything else is plain DOM. Text only ever goes in through textContent.
'use strict';
(() => {
  /** How often the page asks for the fleet view (the server caches it for 1 s; agents report every 2-15 s). */
  const POLL_MS = 3000;
  /** Above this many nodes the map shows one circle per group (a node map would be unreadable). */
  const MAX_MAP_NODES = 400;
  /** Simulation steps run at once when the set of nodes or links changes (no animation, stable for screenshots). */
  const LAYOUT_TICKS = 300;
  const W = 1000;
  const H = 640;
  const PAD = 28;
  const SVG = 'http://www.w3.org/2000/svg';
  const NO_GROUP = '(none)';

  const $ = (id) => document.getElementById(id);
  const map = $('map');
  const tooltip = $('tooltip');
  let layoutKey = '';
  let positions = new Map();

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function html(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const groupOf = (g) => (g === null || g === undefined ? NO_GROUP : g);
  const ms = (v) => (v === null || v === undefined ? '-' : `${v < 10 ? v.toFixed(1) : Math.round(v)} ms`);
  function bytes(n) {
    if (n < 1024) return `${n} B`;
    const u = ['KiB', 'MiB', 'GiB', 'TiB'];
    let i = -1;
    do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
    return `${n.toFixed(1)} ${u[i]}`;
  }
  /** A small deterministic hash, so first positions (and screenshots) do not depend on Math.random. */
  function hash(s) {
    let h = 2166136261;
    for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
    return (h >>> 0) / 4294967296;
  }

  // --- tooltip ---
  function showTip(ev, text) {
    tooltip.textContent = text;
    tooltip.hidden = false;
    const box = map.parentElement.getBoundingClientRect();
    tooltip.style.left = `${ev.clientX - box.left + 12}px`;
    tooltip.style.top = `${ev.clientY - box.top + 12}px`;
  }
  function hideTip() { tooltip.hidden = true; }
  function hover(e, text) {
    e.addEventListener('mousemove', (ev) => showTip(ev, text));
    e.addEventListener('mouseleave', hideTip);
    e.appendChild(svg('title', {}, text));
  }

  // --- map ---
  function mapModel(view) {
    if (view.nodes.length <= MAX_MAP_NODES) {
      const nodes = view.nodes.map((n) => ({
        id: n.node, group: groupOf(n.group), label: n.node,
        cls: n.state === 'down' ? 'down' : n.state === 'no-report' ? 'no-report' : n.ready ? 'ready' : 'not-ready',
        tip: `${n.node} (group ${groupOf(n.group)})\n${n.state}${n.ready === false ? `, not ready: ${n.notReady.join(', ')}` : n.ready ? ', ready' : ''}\nNAT ${n.nat ?? '?'}, version ${n.version ?? '?'}\n${n.peers} peers, report ${n.reportAgeSeconds} s old`,
      }));
      const ids = new Set(nodes.map((n) => n.id));
      // A peer that reports nothing still appears (from the other side's report), in the group it was seen in.
      for (const l of view.links) {
        [[l.a, l.groups[0]], [l.b, l.groups[1]]].forEach(([id, g]) => {
          if (!ids.has(id)) { ids.add(id); nodes.push({ id, group: g, label: id, cls: 'no-report', tip: `${id} (group ${g})\nnot known to this server` }); }
        });
      }
      const links = view.links.map((l) => ({
        source: l.a, target: l.b, a: l.a, b: l.b, path: l.path, same: l.groups[0] === l.groups[1],
        tip: `${l.a} <-> ${l.b}: ${l.path}\nrtt ${ms(l.rttMs)}, ${bytes(l.bytes)}`,
      }));
      return { mode: 'nodes', nodes, links };
    }
    const bad = new Set(view.nodes.filter((n) => n.state !== 'up' || !n.ready).map((n) => groupOf(n.group)));
    const nodes = view.groups.map((g) => ({ id: g.name, group: g.name, label: `${g.name} (${g.nodes.length})`, cls: bad.has(g.name) ? 'not-ready' : 'ready', tip: `group ${g.name}: ${g.nodes.length} nodes` }));
    const links = view.matrix.filter((c) => c.a !== c.b).map((c) => ({
      source: c.a, target: c.b, a: c.a, b: c.b, path: c.path, same: false,
      tip: `${c.a} <-> ${c.b}: ${c.path} (${c.links} links: ${c.direct} direct, ${c.relay} relay)\nmedian rtt ${ms(c.medianRttMs)}`,
    }));
    return { mode: 'groups', nodes, links };
  }

  function layout(model) {
    const groups = [...new Set(model.nodes.map((n) => n.group))].sort();
    const cols = Math.max(1, Math.ceil(Math.sqrt(groups.length * (W / H))));
    const rows = Math.max(1, Math.ceil(groups.length / cols));
    const anchor = new Map(groups.map((g, i) => [g, { x: ((i % cols) + 0.5) * (W / cols), y: (Math.floor(i / cols) + 0.5) * (H / rows) }]));
    for (const n of model.nodes) {
      const p = positions.get(n.id);
      const a = anchor.get(n.group);
      n.x = p ? p.x : a.x + (hash(n.id) - 0.5) * 60;
      n.y = p ? p.y : a.y + (hash(`${n.id}#`) - 0.5) * 60;
    }
    const spread = Math.min(W / cols, H / rows);
    const sim = d3.forceSimulation(model.nodes)
      .force('link', d3.forceLink(model.links).id((d) => d.id).distance((l) => (l.same ? 80 : spread * 0.8)).strength((l) => (l.same ? 0.6 : 0.02)))
      .force('charge', d3.forceManyBody().strength(model.mode === 'groups' ? -60 : -160))
      .force('x', d3.forceX((d) => anchor.get(d.group).x).strength(model.mode === 'groups' ? 0.5 : 0.2))
      .force('y', d3.forceY((d) => anchor.get(d.group).y).strength(model.mode === 'groups' ? 0.5 : 0.2))
      .force('collide', d3.forceCollide(model.mode === 'groups' ? 44 : 30))
      .stop();
    sim.tick(LAYOUT_TICKS);
    positions = new Map();
    for (const n of model.nodes) {
      n.x = Math.max(PAD + 20, Math.min(W - PAD - 20, n.x));
      n.y = Math.max(PAD + 20, Math.min(H - PAD - 20, n.y));
      positions.set(n.id, { x: n.x, y: n.y });
    }
  }

  function drawMap(view) {
    const model = mapModel(view);
    const key = JSON.stringify([model.mode, model.nodes.map((n) => [n.id, n.group]), model.links.map((l) => [l.a, l.b])]);
    if (key !== layoutKey) {
      layout(model);
      layoutKey = key;
    } else {
      for (const n of model.nodes) Object.assign(n, positions.get(n.id));
    }
    const at = new Map(model.nodes.map((n) => [n.id, n]));
    map.replaceChildren();
    map.dataset.mode = model.mode;
    if (model.mode === 'nodes') {
      const members = new Map();
      for (const n of model.nodes) members.set(n.group, [...(members.get(n.group) || []), n]);
      const layer = svg('g', { class: 'groups' });
      for (const [g, ns] of [...members].sort((x, y) => x[0].localeCompare(y[0]))) {
        const cx = ns.reduce((s, n) => s + n.x, 0) / ns.length;
        const cy = ns.reduce((s, n) => s + n.y, 0) / ns.length;
        const r = Math.max(...ns.map((n) => Math.hypot(n.x - cx, n.y - cy))) + 34;
        const c = svg('g', { class: 'cluster', 'data-group': g });
        c.appendChild(svg('circle', { class: 'group', cx: cx.toFixed(1), cy: cy.toFixed(1), r: r.toFixed(1) }));
        c.appendChild(svg('text', { class: 'group-label', x: cx.toFixed(1), y: Math.max(14, cy - r - 6).toFixed(1) }, g));
        hover(c, `group ${g}: ${ns.length} node${ns.length === 1 ? '' : 's'}`);
        layer.appendChild(c);
      }
      map.appendChild(layer);
    }
    const linkLayer = svg('g', { class: 'links' });
    for (const l of model.links) {
      const a = at.get(l.a);
      const b = at.get(l.b);
      const line = svg('line', { class: `link path-${l.path}`, 'data-a': l.a, 'data-b': l.b, 'data-path': l.path, x1: a.x.toFixed(1), y1: a.y.toFixed(1), x2: b.x.toFixed(1), y2: b.y.toFixed(1) });
      hover(line, l.tip);
      linkLayer.appendChild(line);
    }
    map.appendChild(linkLayer);
    const nodeLayer = svg('g', { class: 'nodes' });
    for (const n of model.nodes) {
      const g = svg('g', { class: `node ${n.cls}`, 'data-node': n.id, 'data-group': n.group, transform: `translate(${n.x.toFixed(1)},${n.y.toFixed(1)})` });
      g.appendChild(svg('circle', { r: model.mode === 'groups' ? 16 : 11 }));
      g.appendChild(svg('text', { y: model.mode === 'groups' ? 32 : 26 }, n.label));
      hover(g, n.tip);
      nodeLayer.appendChild(g);
    }
    map.appendChild(nodeLayer);
    fitView(model);
  }

  /** Zooms the view onto what is drawn (keeping the page's aspect ratio), so a small fleet is not a speck. */
  function fitView(model) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    const take = (x, y, r) => { x0 = Math.min(x0, x - r); y0 = Math.min(y0, y - r); x1 = Math.max(x1, x + r); y1 = Math.max(y1, y + r); };
    for (const n of model.nodes) take(n.x, n.y, 40);
    for (const c of map.querySelectorAll('circle.group')) take(Number(c.getAttribute('cx')), Number(c.getAttribute('cy')), Number(c.getAttribute('r')) + 20);
    if (!Number.isFinite(x0)) { map.setAttribute('viewBox', `0 0 ${W} ${H}`); return; }
    let w = Math.max(x1 - x0, W / 2.5);
    let h = Math.max(y1 - y0, H / 2.5);
    if (w / h > W / H) h = w * (H / W); else w = h * (W / H);
    const cx = (x0 + x1) / 2;
    const cy = (y0 + y1) / 2;
    map.setAttribute('viewBox', `${(cx - w / 2).toFixed(1)} ${(cy - h / 2).toFixed(1)} ${w.toFixed(1)} ${h.toFixed(1)}`);
  }

  // --- tables ---
  function drawMatrix(view) {
    const t = $('matrix');
    t.replaceChildren();
    const groups = view.groups.map((g) => g.name);
    const cells = new Map(view.matrix.map((c) => [`${c.a}\u0000${c.b}`, c]));
    const head = html('tr');
    head.appendChild(html('th', {}, ''));
    for (const g of groups) head.appendChild(html('th', { scope: 'col' }, g));
    t.appendChild(head);
    for (const r of groups) {
      const tr = html('tr');
      tr.appendChild(html('th', { scope: 'row' }, r));
      for (const c of groups) {
        const [a, b] = r <= c ? [r, c] : [c, r];
        const cell = cells.get(`${a}\u0000${b}`);
        if (!cell) {
          tr.appendChild(html('td', { class: 'cell empty', 'data-a': a, 'data-b': b, 'data-path': 'none' }, '-'));
          continue;
        }
        const td = html('td', { class: `cell path-${cell.path}`, 'data-a': a, 'data-b': b, 'data-path': cell.path, title: `${cell.links} links: ${cell.direct} direct, ${cell.relay} relay, ${cell.mixed} mixed, ${cell.connecting} connecting` }, cell.path);
        td.appendChild(html('small', {}, ` ${ms(cell.medianRttMs)}`));
        tr.appendChild(td);
      }
      t.appendChild(tr);
    }
    if (!groups.length) t.appendChild(html('tr')).appendChild(html('td', {}, 'no groups'));
  }

  function drawWarnings(view) {
    const ul = $('warnings');
    ul.replaceChildren();
    for (const w of view.warnings) ul.appendChild(html('li', { class: `sev-${w.severity}`, 'data-kind': w.kind }, `${w.severity}: ${w.message}`));
    if (view.warningsOmitted) ul.appendChild(html('li', { class: 'sev-info' }, `${view.warningsOmitted} more warnings (edgemesh fleet --json lists the first ${view.warnings.length})`));
    if (!view.warnings.length) ul.appendChild(html('li', { class: 'none' }, 'none'));
  }

  function drawNodes(view) {
    const t = $('nodes');
    t.replaceChildren();
    const head = html('tr');
    for (const h of ['node', 'group', 'state', 'ready', 'NAT', 'version', 'peers']) head.appendChild(html('th', { scope: 'col' }, h));
    t.appendChild(head);
    for (const n of view.nodes) {
      const tr = html('tr', { 'data-node': n.node });
      for (const v of [n.node, groupOf(n.group), n.state, n.ready === null ? '-' : n.ready ? 'yes' : `no (${n.notReady.join(', ')})`, n.nat ?? '-', n.version ?? '-', String(n.peers)]) tr.appendChild(html('td', {}, v));
      t.appendChild(tr);
    }
  }

  function render(view) {
    const s = view.summary;
    const health = $('health');
    health.textContent = view.healthy ? 'healthy' : 'unhealthy';
    health.className = `badge ${view.healthy ? 'healthy' : 'unhealthy'}`;
    $('summary').textContent = `${s.nodes} nodes (${s.ready} ready${s.notReady ? `, ${s.notReady} not ready` : ''}${s.down ? `, ${s.down} down` : ''}) in ${s.groups} groups; links ${s.links.direct} direct, ${s.links.relay} relay${s.links.mixed ? `, ${s.links.mixed} mixed` : ''}; relay share ${s.relayShare === null ? '-' : `${Math.round(s.relayShare * 100)}%`}`;
    $('updated').textContent = `updated ${new Date(view.generatedAt).toLocaleTimeString()}`;
    drawMap(view);
    drawMatrix(view);
    drawWarnings(view);
    drawNodes(view);
    document.body.dataset.state = 'ready';
    document.body.dataset.generatedAt = view.generatedAt;
  }

  async function poll() {
    try {
      const r = await fetch('/fleet', { cache: 'no-store', headers: { accept: 'application/json' } });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      render(await r.json());
      $('error').hidden = true;
    } catch (e) {
      $('error').textContent = `cannot load /fleet: ${e.message} (retrying every ${POLL_MS / 1000} s)`;
      $('error').hidden = false;
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }
  poll();
})();
