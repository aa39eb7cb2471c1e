// Vigil's web console. Plain browser JavaScript, no framework and no build
// step: it is served as written, from files embedded in the member's binary.
// Every value from the server is put on the page as text (textContent),
// never as HTML, and the page's content security policy allows no inline
// script, so a device name cannot run as code.
'use strict';

const TOKEN_KEY = 'vigil.console.token';
const MAX_ROWS = 200; // decisions kept on the page
const REFRESH_MS = 5000;

const S = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  session: null,
  stop: [], // what to undo when the page changes (timers, streams)
};

// ---------- small helpers ----------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmtNum(n) { return (n || 0).toLocaleString('en-US'); }

function fmtTime(t) {
  if (!t || t.startsWith('0001-')) return '';
  const d = new Date(t);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function ago(t) {
  if (!t || t.startsWith('0001-')) return '';
  const s = Math.round((Date.now() - new Date(t).getTime()) / 1000);
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 3600) + ' h ago';
  return Math.round(s / 86400) + ' d ago';
}

function toast(msg, isError) {
  const t = document.getElementById('toast');
  t.textContent = msg;
  t.className = 'toast show' + (isError ? ' error' : '');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = 'toast'; }, 6000);
}

function badge(text, kind) { return el('span', { class: 'badge ' + (kind || text), text }); }

function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v !== undefined && v !== null) u.set(k, v);
  const s = u.toString();
  return s ? '?' + s : '';
}

function route() {
  const h = location.hash.replace(/^#\/?/, '');
  const [path, query] = h.split('?');
  const parts = path.split('/').map(decodeURIComponent);
  return { page: parts[0] || 'topology', arg: parts.slice(1).join('/'), params: new URLSearchParams(query || '') };
}

function go(page, arg, params) {
  let h = '#/' + page;
  if (arg) h += '/' + encodeURIComponent(arg);
  if (params) h += qs(params);
  if (location.hash === h) render(); else location.hash = h;
}

class APIError extends Error {
  constructor(status, body) {
    super((body && body.message) || ('HTTP ' + status));
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: 'Bearer ' + S.token };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  const ct = res.headers.get('Content-Type') || '';
  const data = ct.includes('json') ? await res.json() : await res.text();
  if (res.status === 401) {
    signOut('The token was refused. Sign in again.');
    throw new APIError(401, data);
  }
  if (!res.ok) throw new APIError(res.status, data);
  return data;
}

// ---------- session ----------

async function signIn(token) {
  S.token = token;
  const res = await fetch('/v1/console/session', { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store' });
  if (!res.ok) {
    S.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    throw new APIError(res.status, await res.json().catch(() => null));
  }
  S.session = await res.json();
  sessionStorage.setItem(TOKEN_KEY, token);
}

function signOut(msg) {
  S.token = '';
  S.session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  cleanup();
  showLogin(msg || '');
}

function showLogin(msg) {
  document.getElementById('nav').hidden = true;
  document.getElementById('session').hidden = true;
  document.getElementById('view').replaceChildren();
  const login = document.getElementById('login');
  login.hidden = false;
  document.getElementById('login-error').textContent = msg || '';
  document.getElementById('token').value = '';
  document.getElementById('token').focus();
}

function showApp() {
  document.getElementById('login').hidden = true;
  document.getElementById('nav').hidden = false;
  document.getElementById('session').hidden = false;
  updateSession();
}

function updateSession() {
  const s = S.session;
  if (!s) return;
  const leader = s.leader ? (s.leader === s.member ? 'leader' : 'leader ' + s.leader) : 'no leader known';
  document.getElementById('session-text').textContent =
    `${s.actor} at member ${s.member} (${leader}) · revision ${fmtNum(s.revision)}`;
}

async function refreshSession() {
  try { S.session = await api('GET', '/v1/console/session'); updateSession(); } catch (e) { /* shown elsewhere */ }
}

// ---------- page plumbing ----------

function cleanup() {
  for (const f of S.stop.splice(0)) { try { f(); } catch (e) { /* ignore */ } }
}

function every(ms, fn) {
  const id = setInterval(fn, ms);
  S.stop.push(() => clearInterval(id));
}

function setPage(title, ...content) {
  document.title = title + ' · Vigil console';
  const view = document.getElementById('view');
  view.replaceChildren(el('h1', { text: title }), ...content);
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.page === route().page || (a.dataset.page === 'topology' && route().page === 'device') ||
        (a.dataset.page === 'incidents' && route().page === 'incident')) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function errorBox(e) { return el('p', { class: 'error', role: 'alert', text: String(e.message || e) }); }

function table(caption, headers, rows, empty) {
  const t = el('table', {},
    el('caption', { class: 'sr-only', text: caption }),
    el('thead', {}, el('tr', {}, headers.map(h => el('th', { scope: 'col', text: h })))),
    el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: headers.length, class: 'empty', text: empty || 'Nothing to show.' }))));
  return t;
}

function pager(offset, limit, total, onPage, label) {
  const from = total === 0 ? 0 : offset + 1;
  const to = Math.min(offset + limit, total);
  return el('div', { class: 'pager', role: 'group', 'aria-label': label },
    el('button', { type: 'button', disabled: offset <= 0, onclick: () => onPage(Math.max(0, offset - limit)) }, 'Previous'),
    el('span', { class: 'count', text: `${fmtNum(from)}–${fmtNum(to)} of ${fmtNum(total)}` }),
    el('button', { type: 'button', disabled: to >= total, onclick: () => onPage(offset + limit) }, 'Next'));
}

function deviceLink(name) { return el('a', { href: '#/device/' + encodeURIComponent(name), text: name }); }

function quarantineCell(q) {
  return q ? el('span', {}, badge('quarantined'), ' ', el('span', { class: 'muted', text: q.reason })) : el('span', { class: 'muted', text: '—' });
}

function riskCell(score) {
  const kind = score >= 70 ? 'high' : score >= 40 ? 'medium' : score > 0 ? 'low' : 'none';
  return el('span', { class: 'risk risk-' + kind, title: 'risk ' + score + ' of 100' }, String(score || 0));
}

function attestationCell(status, firmware) {
  if (!status) return el('span', { class: 'muted', text: 'none' });
  return el('span', {}, badge(status), firmware ? ' ' + firmware : '');
}

// ---------- topology ----------

async function viewTopology(params) {
  const q = params.get('q') || '';
  const stateFilter = params.get('state') || '';
  const zone = params.get('zone') || '';
  const gateway = params.get('gateway') || '';
  const offset = parseInt(params.get('offset') || '0', 10) || 0;
  const limit = 50;

  const summary = el('div', { class: 'summary', 'aria-label': 'Fleet summary' });
  const search = el('input', { id: 'device-search', type: 'search', value: q, placeholder: 'name contains…', autocomplete: 'off', spellcheck: 'false' });
  const state = el('select', { id: 'state-filter' },
    [['', 'Any state'], ['quarantined', 'Quarantined'], ['at-risk', 'At risk'], ['attestation-failed', 'Attestation failed'],
      ['attestation-expired', 'Attestation expired'], ['attested', 'Attested']].map(([v, t]) => el('option', { value: v, selected: v === stateFilter, text: t })));
  const form = el('form', { class: 'toolbar', role: 'search', onsubmit: ev => {
    ev.preventDefault();
    go('topology', '', { q: search.value.trim(), state: state.value, zone, gateway });
  } },
  el('label', { for: 'device-search', text: 'Find a device' }), search,
  el('label', { for: 'state-filter', text: 'State' }), state,
  el('button', { type: 'submit', id: 'search-button', text: 'Search' }),
  (q || stateFilter || zone || gateway) ? el('button', { type: 'button', class: 'link', onclick: () => go('topology', '', {}) }, 'Clear') : null);

  const zonesBox = el('nav', { class: 'col', 'aria-label': 'Zones' }, el('h2', { text: 'Zones' }));
  const gatewaysBox = el('nav', { class: 'col', 'aria-label': 'Gateways' }, el('h2', { text: zone ? 'Gateways in ' + zone : 'Gateways' }));
  const devicesBox = el('section', { class: 'col wide', 'aria-labelledby': 'devices-title' });
  setPage('Topology', summary, form, el('div', { class: 'columns' }, zonesBox, gatewaysBox, devicesBox));

  const loadSummary = async () => {
    try {
      const s = await api('GET', '/v1/console/summary');
      summary.replaceChildren(
        ...[['zones', s.zones], ['gateways', s.gateways], ['devices', s.devices], ['services', s.services], ['flows', s.flows],
          ['quarantined', s.quarantined], ['at risk', s.atRisk], ['attestation failed', s.attestationFailed],
          ['attestation expired', s.attestationExpired]].map(([k, v]) => el('div', { class: 'stat' }, el('span', { class: 'n', text: fmtNum(v) }), el('span', { class: 'k', text: k }))));
    } catch (e) { summary.replaceChildren(errorBox(e)); }
  };

  const loadZones = async () => {
    try {
      const z = await api('GET', '/v1/zones');
      const list = el('ul', { class: 'list' }, z.zones.map(r => el('li', {},
        el('a', { href: '#/topology' + qs({ zone: r.name }), 'aria-current': r.name === zone ? 'true' : null },
          el('span', { text: r.name }), el('span', { class: 'muted', text: ` ${fmtNum(r.gateways)} gw · ${fmtNum(r.devices)} dev` })))));
      zonesBox.replaceChildren(zonesBox.firstChild, z.zones.length ? list : el('p', { class: 'muted', text: 'No topology applied yet.' }));
    } catch (e) { zonesBox.replaceChildren(zonesBox.firstChild, errorBox(e)); }
  };

  const loadGateways = async (goff) => {
    if (!zone) { gatewaysBox.replaceChildren(gatewaysBox.firstChild, el('p', { class: 'muted', text: 'Choose a zone.' })); return; }
    try {
      const g = await api('GET', '/v1/zones/' + encodeURIComponent(zone) + '/gateways' + qs({ offset: goff, limit: 100 }));
      const list = el('ul', { class: 'list' }, g.gateways.map(r => el('li', {},
        el('a', { href: '#/topology' + qs({ zone, gateway: r.name }), 'aria-current': r.name === gateway ? 'true' : null },
          el('span', { text: r.name }), ' ', r.quarantine ? badge('quarantined') : null,
          el('span', { class: 'muted', text: ` ${fmtNum(r.devices)} dev` })))));
      gatewaysBox.replaceChildren(gatewaysBox.firstChild, list, pager(goff, 100, g.total, loadGateways, 'Gateway pages'));
    } catch (e) { gatewaysBox.replaceChildren(gatewaysBox.firstChild, errorBox(e)); }
  };

  const loadDevices = async () => {
    const title = q || stateFilter ? 'Matching devices' : gateway ? 'Devices behind ' + gateway : zone ? 'Devices in ' + zone : 'All devices';
    try {
      const started = performance.now();
      const d = await api('GET', '/v1/devices' + qs({ q, state: stateFilter, zone, gateway, offset, limit }));
      const ms = Math.round(performance.now() - started);
      const rows = d.devices.map(r => el('tr', { 'data-device': r.name },
        el('td', {}, deviceLink(r.name)), el('td', { text: r.class }), el('td', { text: r.gateway }), el('td', { text: r.zone }),
        el('td', {}, quarantineCell(r.quarantine)), el('td', {}, riskCell(r.risk)), el('td', {}, attestationCell(r.attestation, r.firmware))));
      devicesBox.replaceChildren(
        el('h2', { id: 'devices-title', text: title }),
        el('p', { class: 'muted', text: `${fmtNum(d.total)} device(s) at revision ${fmtNum(d.revision)} · answered in ${ms} ms` }),
        table(title, ['Device', 'Class', 'Gateway', 'Zone', 'Quarantine', 'Risk', 'Attestation'], rows, 'No device matches.'),
        pager(offset, limit, d.total, o => go('topology', '', { q, state: stateFilter, zone, gateway, offset: o }), 'Device pages'));
    } catch (e) { devicesBox.replaceChildren(el('h2', { id: 'devices-title', text: title }), errorBox(e)); }
  };

  await Promise.all([loadSummary(), loadZones(), loadGateways(0), loadDevices()]);
  every(REFRESH_MS, () => { loadSummary(); loadDevices(); refreshSession(); });
}

// ---------- one device ----------

async function viewDevice(name) {
  const status = el('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
  const body = el('div');
  setPage('Device ' + name, el('p', {}, el('a', { href: '#/topology', text: '← Topology' })), body, status);

  const load = async () => {
    let d;
    try { d = await api('GET', '/v1/devices/' + encodeURIComponent(name)); } catch (e) { body.replaceChildren(errorBox(e)); return; }
    const st = d.state || {};
    const rows = [['Class', d.class], ['Gateway', d.gateway], ['Zone', d.zone], ['SPIFFE ID', d.spiffeId], ['Revision', fmtNum(d.revision)]];
    const labels = Object.keys(d.labels || {}).sort().map(k => k + '=' + d.labels[k]).join(', ');
    if (labels) rows.push(['Labels', labels]);
    const dl = el('dl', { class: 'facts' }, rows.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: v || '—' })]));

    const q = st.quarantine;
    const qBox = el('section', { class: 'card', 'aria-labelledby': 'q-title' }, el('h2', { id: 'q-title', text: 'Quarantine' }));
    if (q) {
      qBox.append(el('p', { id: 'quarantine-state' }, badge('quarantined'), ` since ${fmtTime(q.since)} by ${q.by}: `, el('q', { text: q.reason })),
        el('button', { type: 'button', id: 'release', onclick: async () => {
          status.textContent = 'Releasing…';
          try { await api('POST', '/v1/devices/' + encodeURIComponent(name) + '/release'); status.textContent = name + ' was released.'; toast(name + ' released'); load(); } catch (e) { status.textContent = 'Release failed: ' + e.message; }
        } }, 'Release'));
    } else {
      const reason = el('input', { id: 'quarantine-reason', type: 'text', required: true, maxlength: '1024', autocomplete: 'off' });
      qBox.append(el('p', { id: 'quarantine-state', text: 'Not quarantined.' }),
        el('form', { class: 'toolbar', onsubmit: async ev => {
          ev.preventDefault();
          if (!reason.value.trim()) { status.textContent = 'A reason is required.'; reason.focus(); return; }
          status.textContent = 'Quarantining…';
          try {
            await api('POST', '/v1/devices/' + encodeURIComponent(name) + '/quarantine', { reason: reason.value.trim() });
            status.textContent = name + ' is quarantined: every member denies it.';
            toast(name + ' quarantined');
            load();
          } catch (e) { status.textContent = 'Quarantine failed: ' + e.message; }
        } }, el('label', { for: 'quarantine-reason', text: 'Reason' }), reason, el('button', { type: 'submit', id: 'quarantine-button', class: 'danger', text: 'Quarantine' })));
    }

    const r = st.risk;
    const riskBox = el('section', { class: 'card', 'aria-labelledby': 'r-title' }, el('h2', { id: 'r-title', text: 'Risk' }),
      el('p', {}, 'Score ', riskCell(r ? r.score : 0), r ? ` · updated ${ago(r.updatedAt)}` : ''),
      r && r.signals && r.signals.length ? table('Findings', ['Finding', 'Severity', 'Score', 'When', 'Detail'],
        r.signals.map(s => el('tr', {}, el('td', { text: s.name }), el('td', { text: s.severity || '' }), el('td', { text: String(s.score) }),
          el('td', { text: fmtTime(s.at) }), el('td', { text: s.detail || '' })))) : el('p', { class: 'muted', text: 'No findings.' }));

    const a = st.attestation;
    const attBox = el('section', { class: 'card', 'aria-labelledby': 'a-title' }, el('h2', { id: 'a-title', text: 'Attestation' }),
      a ? el('dl', { class: 'facts' }, [['Status', a.status || 'passed'], ['Format', a.method], ['Firmware', a.firmwareVersion],
        ['Verified', fmtTime(a.verifiedAt) + ' by ' + (a.verifier || '?')], ['Expires', fmtTime(a.expiresAt)],
        ['Reasons', (a.reasons || []).join('; ')]].filter(([, v]) => v).map(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]))
        : el('p', { class: 'muted', text: 'No attestation recorded.' }));

    body.replaceChildren(dl,
      el('p', {}, el('a', { href: '#/decisions' + qs({ device: name }), id: 'watch-decisions', text: 'Watch its decisions live →' }), ' · ',
        el('a', { href: '#/incidents' + qs({ device: name }), text: 'Its incidents' })),
      el('div', { class: 'cards' }, qBox, riskBox, attBox));
  };
  await load();
  every(REFRESH_MS, () => { if (!document.activeElement || document.activeElement.id !== 'quarantine-reason') load(); });
}

// ---------- live decisions ----------

function parseSSE(buf, onEvent) {
  let i;
  while ((i = buf.indexOf('\n\n')) >= 0) {
    const block = buf.slice(0, i);
    buf = buf.slice(i + 2);
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
    }
    if (data.length) onEvent(event, data.join('\n'));
  }
  return buf;
}

async function viewDecisions(params) {
  const f = { device: params.get('device') || '', gateway: params.get('gateway') || '', service: params.get('service') || '', result: params.get('result') || '' };
  const inputs = {};
  const field = (k, label) => {
    inputs[k] = el('input', { id: 'filter-' + k, type: 'text', value: f[k], autocomplete: 'off', spellcheck: 'false' });
    return [el('label', { for: 'filter-' + k, text: label }), inputs[k]];
  };
  inputs.result = el('select', { id: 'filter-result' }, [['', 'Any'], ['allow', 'Allowed'], ['deny', 'Denied']].map(([v, t]) => el('option', { value: v, selected: v === f.result, text: t })));
  const form = el('form', { class: 'toolbar', 'aria-label': 'Filter decisions', onsubmit: ev => {
    ev.preventDefault();
    go('decisions', '', Object.fromEntries(Object.entries(inputs).map(([k, i]) => [k, i.value.trim()])));
  } }, field('device', 'Device'), field('gateway', 'Gateway'), field('service', 'Service'),
  el('label', { for: 'filter-result', text: 'Result' }), inputs.result, el('button', { type: 'submit', text: 'Apply' }));

  const live = el('p', { id: 'stream-status', class: 'status', role: 'status', text: 'Connecting…' });
  let paused = false;
  const pause = el('button', { type: 'button', id: 'pause', 'aria-pressed': 'false', onclick: () => {
    paused = !paused;
    pause.textContent = paused ? 'Resume' : 'Pause';
    pause.setAttribute('aria-pressed', String(paused));
  } }, 'Pause');
  const tbody = el('tbody', { id: 'decisions' });
  const t = el('table', { class: 'decisions' }, el('caption', { class: 'sr-only', text: 'Live decisions, newest first' }),
    el('thead', {}, el('tr', {}, ['Time', 'Result', 'Subject', 'Gateway', 'Service', 'Request', 'Reason', 'Member'].map(h => el('th', { scope: 'col', text: h })))), tbody);
  setPage('Live decisions', form, el('div', { class: 'toolbar' }, pause, live), el('div', { class: 'scroll' }, t));

  const ctl = new AbortController();
  S.stop.push(() => ctl.abort());
  let pending = [];
  let received = 0;
  let frame = 0;
  const flush = () => {
    frame = 0;
    if (paused || !pending.length) return;
    const batch = pending.slice(-MAX_ROWS).reverse();
    pending = [];
    const frag = document.createDocumentFragment();
    for (const d of batch) {
      frag.append(el('tr', { class: d.allowed ? 'decision-allow' : 'decision-deny', 'data-subject': d.subject, 'data-result': d.allowed ? 'allow' : 'deny' },
        el('td', { text: fmtTime(d.at) }), el('td', {}, badge(d.allowed ? 'allow' : 'deny')),
        el('td', {}, d.kind === 'device' ? deviceLink(d.subject) : d.subject), el('td', { text: d.gateway || '' }),
        el('td', { text: d.service || '' }), el('td', { class: 'mono', text: ((d.method || '') + ' ' + (d.path || '')).trim() }),
        el('td', { text: (d.cause ? d.cause + ': ' : '') + (d.reason || d.flow || '') }), el('td', { text: d.member || '' })));
    }
    tbody.prepend(frag);
    while (tbody.rows.length > MAX_ROWS) tbody.deleteRow(-1);
  };
  const onEvent = (event, data) => {
    if (event === 'decision') {
      received++;
      pending.push(JSON.parse(data));
      if (pending.length > MAX_ROWS) pending.splice(0, pending.length - MAX_ROWS);
      if (!frame) frame = requestAnimationFrame(flush);
    } else if (event === 'stats') {
      const s = JSON.parse(data);
      const peers = (s.peers || []).map(p => p.member + (p.connected ? '' : ' (not connected' + (p.error ? ': ' + p.error : '') + ')')).join(', ');
      live.textContent = `Live from ${s.member}${peers ? ' and ' + peers : ''} · ${fmtNum(received)} shown since opening · ` +
        `${fmtNum(s.matched)} matched here, ${fmtNum(s.dropped)} dropped, ${fmtNum(s.skipped)} over ${fmtNum(s.maxRate)}/s not sent` + (paused ? ' · paused' : '');
    }
  };
  const connect = async () => {
    while (!ctl.signal.aborted) {
      try {
        const res = await fetch('/v1/decisions/stream' + qs(f), { headers: { Authorization: 'Bearer ' + S.token, Accept: 'text/event-stream' }, signal: ctl.signal, cache: 'no-store' });
        if (res.status === 401) { signOut('The token was refused. Sign in again.'); return; }
        if (!res.ok) { const b = await res.json().catch(() => ({})); throw new Error(b.message || res.statusText); }
        live.textContent = 'Live: waiting for decisions…';
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf = parseSSE(buf + dec.decode(value, { stream: true }), onEvent);
        }
        live.textContent = 'The stream ended; reconnecting…';
      } catch (e) {
        if (ctl.signal.aborted) return;
        live.textContent = 'Stream error: ' + e.message + '; reconnecting…';
      }
      await new Promise(r => setTimeout(r, 2000));
    }
  };
  connect();
}

// ---------- incidents ----------

async function viewIncidents(params) {
  const status = params.get('status') || '';
  const device = params.get('device') || '';
  const sel = el('select', { id: 'incident-status' }, [['', 'Any'], ['open', 'Open'], ['awaiting', 'Awaiting approval'], ['acknowledged', 'Acknowledged'], ['resolved', 'Resolved']]
    .map(([v, t]) => el('option', { value: v, selected: v === status, text: t })));
  const form = el('form', { class: 'toolbar', onsubmit: ev => { ev.preventDefault(); go('incidents', '', { status: sel.value, device }); } },
    el('label', { for: 'incident-status', text: 'Status' }), sel, el('button', { type: 'submit', text: 'Show' }),
    device ? el('span', { class: 'muted', text: 'of device ' + device }) : null);
  const box = el('div');
  setPage('Incidents', form, box);
  const load = async () => {
    try {
      const list = await api('GET', '/v1/incidents' + qs({ status, device, limit: 500 }));
      box.replaceChildren(table('Incidents', ['Incident', 'Subject', 'Status', 'Mode', 'Risk', 'Title', 'Opened', 'Actions'],
        list.map(i => el('tr', {}, el('td', {}, el('a', { href: '#/incident/' + encodeURIComponent(i.id), text: i.id })),
          el('td', {}, i.subject.kind === 'device' ? deviceLink(i.subject.name) : i.subject.kind + '/' + i.subject.name),
          el('td', {}, badge(i.status)), el('td', { text: i.mode }), el('td', {}, riskCell(i.risk)), el('td', { text: i.title }),
          el('td', { text: ago(i.openedAt) }), el('td', { text: String((i.actions || []).length) }))), 'No incidents.'));
    } catch (e) { box.replaceChildren(errorBox(e)); }
  };
  await load();
  every(REFRESH_MS, load);
}

async function viewIncident(id) {
  const status = el('p', { class: 'status', role: 'status', 'aria-live': 'polite' });
  const body = el('div');
  setPage('Incident ' + id, el('p', {}, el('a', { href: '#/incidents', text: '← Incidents' })), body, status);
  const load = async () => {
    let i;
    try { i = await api('GET', '/v1/incidents/' + encodeURIComponent(id)); } catch (e) { body.replaceChildren(errorBox(e)); return; }
    const note = el('input', { id: 'incident-note', type: 'text', maxlength: '1024', autocomplete: 'off' });
    const act = verb => async () => {
      status.textContent = verb + '…';
      try { await api('POST', `/v1/incidents/${encodeURIComponent(id)}/${verb}`, note.value.trim() ? { note: note.value.trim() } : {}); status.textContent = 'Done: ' + verb; load(); } catch (e) { status.textContent = verb + ' failed: ' + e.message; }
    };
    const buttons = [];
    if (i.status === 'awaiting') buttons.push(el('button', { type: 'button', class: 'danger', onclick: act('approve') }, 'Approve quarantine'));
    if (i.status === 'open' || i.status === 'awaiting') buttons.push(el('button', { type: 'button', onclick: act('ack') }, 'Acknowledge'));
    if (i.status !== 'resolved') buttons.push(el('button', { type: 'button', onclick: act('resolve') }, 'Resolve'));
    body.replaceChildren(
      el('dl', { class: 'facts' }, [['Subject', i.subject.kind + '/' + i.subject.name], ['Status', i.status], ['Mode', i.mode], ['Risk', String(i.risk)],
        ['Title', i.title], ['Opened', fmtTime(i.openedAt) + ' by ' + i.openedBy], ['Updated', fmtTime(i.updatedAt)]].map(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })])),
      buttons.length ? el('div', { class: 'toolbar' }, el('label', { for: 'incident-note', text: 'Note' }), note, ...buttons) : null,
      el('h2', { text: 'Findings' }),
      table('Findings', ['Detector', 'Severity', 'Score', 'When', 'Summary', 'Evidence'], (i.findings || []).map(f => el('tr', {},
        el('td', { text: f.detector }), el('td', {}, badge(f.severity || 'low')), el('td', { text: String(f.score) }),
        el('td', { text: fmtTime(f.at) }), el('td', { text: (f.learning ? '(learning) ' : '') + (f.summary || '') }),
        el('td', { class: 'mono', text: Object.keys(f.evidence || {}).sort().map(k => k + '=' + f.evidence[k]).join(' ') }))), 'No findings.'),
      el('h2', { text: 'Actions' }),
      table('Actions', ['When', 'Action', 'Outcome', 'By', 'Detail'], (i.actions || []).map(a => el('tr', {},
        el('td', { text: fmtTime(a.at) }), el('td', { text: a.name }), el('td', {}, badge(a.outcome)), el('td', { text: a.by }), el('td', { text: a.detail || '' }))), 'No actions yet.'));
  };
  await load();
  every(REFRESH_MS, () => { if (!document.activeElement || document.activeElement.id !== 'incident-note') load(); });
}

// ---------- proxies ----------

function shortType(url) { return (url || '').replace(/^type\.googleapis\.com\/envoy\.(config|extensions\.transport_sockets\.tls)\.[a-z_.]*v3\./, ''); }

async function viewProxies(params) {
  const filter = params.get('q') || '';
  const nacked = params.get('nacked') === 'true';
  const offset = parseInt(params.get('offset') || '0', 10) || 0;
  const input = el('input', { id: 'proxy-filter', type: 'search', value: filter, autocomplete: 'off', spellcheck: 'false' });
  const only = el('input', { id: 'proxy-nacked', type: 'checkbox', checked: nacked });
  const form = el('form', { class: 'toolbar', role: 'search', onsubmit: ev => { ev.preventDefault(); go('proxies', '', { q: input.value.trim(), nacked: only.checked ? 'true' : '' }); } },
    el('label', { for: 'proxy-filter', text: 'Node contains' }), input, only, el('label', { for: 'proxy-nacked', text: 'Only with a NACK' }),
    el('button', { type: 'submit', text: 'Filter' }));
  const box = el('div');
  setPage('Proxies', form, box);
  const load = async () => {
    let r;
    try { r = await api('GET', '/v1/cluster/proxies' + qs({ q: filter, nacked: nacked ? 'true' : '', offset, limit: 100 })); } catch (e) { box.replaceChildren(errorBox(e)); return; }
    const errors = (r.errors || []).map(m => el('p', { class: 'error', text: `member ${m.member}: ${m.error}` }));
    box.replaceChildren(...errors,
      el('p', { class: 'muted', text: `${fmtNum(r.total)} proxies, ${fmtNum(r.nacked)} with a NACK (answered by ${r.answeredBy})` }),
      table('Proxies', ['Node', 'Member', 'Connection', 'Identity', 'Resources (sent / ACKed)', 'Last NACK'], r.proxies.map(({ member, proxy: p }) => {
        const nack = (p.Types || []).find(t => t.Nack);
        return el('tr', { class: nack ? 'nacked' : '' }, el('td', { class: 'mono', text: p.NodeID }), el('td', { text: member }),
          el('td', {}, p.Connected ? badge('connected', 'allow') : badge('disconnected', 'deny'), p.Proxyless ? ' gRPC' : ' Envoy', p.DenyAll ? ' · deny-all' : ''),
          el('td', { class: 'mono', text: p.Identity || '' }),
          el('td', {}, el('ul', { class: 'types' }, (p.Types || []).map(t => el('li', {},
            el('span', { text: shortType(t.TypeURL) + ': ' }), el('span', { class: t.Sent === t.Acked ? '' : 'pending', text: `${t.Sent || '—'} / ${t.Acked || '—'}` }))))),
          el('td', {}, nack ? el('span', {}, badge('NACK', 'deny'), ` ${shortType(nack.TypeURL)} ${nack.Nack.Version}: ${nack.Nack.Message}`) : el('span', { class: 'muted', text: 'none' })));
      }), 'No proxy is connected.'),
      pager(offset, 100, r.total, o => go('proxies', '', { q: filter, nacked: nacked ? 'true' : '', offset: o }), 'Proxy pages'));
  };
  await load();
  every(REFRESH_MS, load);
}

// ---------- cluster ----------

async function viewCluster() {
  const box = el('div');
  const node = el('div');
  setPage('Cluster', box, el('h2', { text: 'This member' }), node);
  const load = async () => {
    try {
      const c = await api('GET', '/v1/cluster/status');
      box.replaceChildren(el('p', {}, `Answered by ${c.answeredBy} · leader ${c.leaderId || 'unknown'} · term ${c.term} · revision ${fmtNum(c.revision)}`),
        table('Members', ['Member', 'Role', 'Reachable', 'Revision', 'Applied index', 'Raft address', 'API address', 'Error'], c.members.map(m => el('tr', {},
          el('td', { text: m.id }), el('td', {}, m.id === c.leaderId ? badge('leader', 'allow') : (m.state || '').toLowerCase() || '—'),
          el('td', {}, m.reachable ? badge('yes', 'allow') : badge('no', 'deny')), el('td', { text: fmtNum(m.revision) }),
          el('td', { text: fmtNum(m.appliedIndex) }), el('td', { class: 'mono', text: m.raftAddr || '' }), el('td', { class: 'mono', text: m.apiAddr || '' }),
          el('td', { text: m.error || '' })))));
    } catch (e) { box.replaceChildren(errorBox(e)); }
    try {
      const n = await api('GET', '/v1/node');
      node.replaceChildren(el('p', {}, `${n.id} · ${n.ready ? 'ready' : 'not ready'} · revision ${fmtNum(n.revision)}`),
        el('pre', { class: 'json', tabindex: '0', 'aria-label': 'Member parts', text: JSON.stringify(n.parts || {}, null, 2) }));
    } catch (e) { node.replaceChildren(errorBox(e)); }
  };
  await load();
  every(REFRESH_MS, load);
}

// ---------- start ----------

async function render() {
  cleanup();
  if (!S.token) { showLogin(''); return; }
  showApp();
  const r = route();
  switch (r.page) {
    case 'device': return viewDevice(r.arg);
    case 'decisions': return viewDecisions(r.params);
    case 'incidents': return viewIncidents(r.params);
    case 'incident': return viewIncident(r.arg);
    case 'proxies': return viewProxies(r.params);
    case 'cluster': return viewCluster();
    default: return viewTopology(r.params);
  }
}

async function start() {
  document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));
  document.getElementById('login-form').addEventListener('submit', async ev => {
    ev.preventDefault();
    const tok = document.getElementById('token').value.trim();
    const err = document.getElementById('login-error');
    err.textContent = '';
    try {
      await signIn(tok);
      if (!location.hash || location.hash === '#' || location.hash.startsWith('#code=')) location.hash = '#/topology';
      render();
    } catch (e) {
      err.textContent = e.status === 401 ? 'The token was refused.' : 'Sign-in failed: ' + e.message;
      document.getElementById('token').select();
    }
  });
  window.addEventListener('hashchange', () => {
    if (/^#code=/.test(location.hash)) loginByLink();
    else if (S.token) render();
  });
  if (/^#code=/.test(location.hash)) return loginByLink();
  if (S.token) {
    try { await signIn(S.token); } catch (e) { showLogin(e.status === 401 ? 'Your session ended. Sign in again.' : e.message); return; }
  }
  render();
}

// loginByLink spends the one-time code in the URL's fragment.
async function loginByLink() {
  const m = location.hash.match(/^#code=([A-Za-z0-9_-]+)$/);
  history.replaceState(null, '', '/ui/#/topology'); // the code is spent: keep it out of history
  if (!m) { showLogin('The login link is malformed.'); return; }
  try {
    const res = await fetch('/v1/console/login', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ code: m[1] }), cache: 'no-store' });
    const b = await res.json();
    if (!res.ok) { signOut(b.message || 'The login link was refused.'); return; }
    await signIn(b.token);
  } catch (e) { signOut('The login link was refused: ' + e.message); return; }
  render();
}

start();
