/* web/app.js -- kiln's web console, plain JavaScript (no framework, no build step).
 * Reads kiln's ComfyUI API: /system_stats and /gpus (devices), /queue/all (every device's
 * queue), /history (gallery, images per minute), /metrics (execution time per device),
 * /object_info (the form's lists); acts through POST /prompt (X-TARGET-GPU picks a device),
 * POST /queue (cancel, clear) and POST /interrupt. Live progress comes over the WebSocket
 * /ws?clientId=…&watch=all, kiln's extension that also delivers other clients' events.
 * Every URL is relative to the page's folder, so the console works behind a path prefix and
 * at /kiln/console/. State lives in the module-level variables below; the DOM is rebuilt
 * only where data changed, and focus is kept across rebuilds (data-key). */
'use strict';

/* ===== Server access ===== */

// the API root: the page's folder, less /kiln/console/ when the console is served there
const ROOT = location.origin + location.pathname.replace(/kiln\/console\/[^/]*$/, '').replace(/[^/]*$/, '');
const CLIENT_ID = uuid4();
let token = localStorage.getItem('kiln.token') || '';

function uuid4() { // crypto.randomUUID needs a secure context; getRandomValues does not
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const x = [...b].map((v) => v.toString(16).padStart(2, '0')).join('');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}

// fetch(ROOT + path) with the token; a 401 shows the token bar and throws
async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers);
  if (token) headers.Authorization = 'Bearer ' + token;
  const res = await fetch(ROOT + path, Object.assign({}, opts, { headers }));
  if (res.status === 401) {
    const bar = $('#token-bar');
    if (bar.hidden) { bar.hidden = false; $('#token-input').focus(); }
    throw new Error('the server needs its API token');
  }
  return res;
}
async function apiJson(path, opts) {
  const res = await api(path, opts);
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}
function postJson(path, body, device) {
  const headers = { 'Content-Type': 'application/json' };
  if (device !== undefined && device !== '') headers['X-TARGET-GPU'] = String(device);
  return api(path, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
}
function viewUrl(img) {
  const q = new URLSearchParams({ filename: img.filename, subfolder: img.subfolder || '', type: img.type || 'output' });
  if (token) q.set('token', token);
  return ROOT + 'view?' + q;
}

/* ===== Small helpers ===== */

const $ = (sel, root = document) => root.querySelector(sel);

// h('div', {class: 'x', onclick: f}, child, 'text', ...): an element
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

// replaces el's children, keeping keyboard focus on the element with the same data-key
function replaceKeepFocus(el, children) {
  const key = document.activeElement && el.contains(document.activeElement) ? document.activeElement.dataset.key : null;
  el.replaceChildren(...children);
  if (key) {
    const again = el.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

const GiB = 1024 ** 3;
function fmtBytes(b) {
  if (b == null) return '—';
  return b >= GiB ? (b / GiB).toFixed(1) + ' GiB' : (b / 1024 ** 2).toFixed(0) + ' MiB';
}
function fmtSecs(s) {
  if (s == null || !isFinite(s)) return '—';
  return s < 1 ? Math.round(s * 1000) + ' ms' : s < 100 ? s.toFixed(1) + ' s' : Math.round(s) + ' s';
}
function shortId(id) { return String(id).slice(0, 8); }
function clip(s, n) { s = String(s ?? '').replace(/\s+/g, ' ').trim(); return s.length > n ? s.slice(0, n - 1) + '…' : s; }

function toast(text, bad) {
  const t = h('div', { class: 'toast' + (bad ? ' bad' : '') }, text);
  $('#toasts').append(t);
  setTimeout(() => t.remove(), bad ? 8000 : 4000);
}

// debounced calls of fn
function later(fn, ms) {
  let timer = null;
  return () => { if (!timer) timer = setTimeout(() => { timer = null; fn(); }, ms); };
}

const COLORS = ['#ea580c', '#2563eb', '#16a34a', '#9333ea', '#db2777', '#0891b2', '#ca8a04', '#4b5563'];
const devColor = (i) => COLORS[i % COLORS.length];

/* ===== Reading a workflow ===== */

const isLink = (v) => Array.isArray(v) && v.length === 2 && typeof v[0] === 'string';

// What a person wants to know of an API-format prompt: the sampler's settings, its texts,
// size and checkpoint, found by walking up from the output nodes (first KSampler met).
function describe(prompt, outputs) {
  const info = {};
  if (!prompt || typeof prompt !== 'object') return info;
  const node = (v) => (isLink(v) ? prompt[v[0]] : null);
  let sampler = null;
  const seen = new Set(), todo = [...(outputs || [])];
  while (todo.length && !sampler) {
    const id = todo.shift();
    if (seen.has(id) || !prompt[id]) continue;
    seen.add(id);
    if (/^KSampler/.test(prompt[id].class_type)) sampler = prompt[id];
    for (const v of Object.values(prompt[id].inputs || {})) if (isLink(v)) todo.push(v[0]);
  }
  sampler ||= Object.values(prompt).find((n) => /^KSampler/.test(n && n.class_type));
  if (!sampler) return info;
  const s = sampler.inputs || {};
  Object.assign(info, { seed: s.seed ?? s.noise_seed, steps: s.steps, cfg: s.cfg, sampler: s.sampler_name, scheduler: s.scheduler });
  const text = (v) => { const n = node(v); return n && typeof n.inputs?.text === 'string' ? n.inputs.text : undefined; };
  info.positive = text(s.positive);
  info.negative = text(s.negative);
  const lat = node(s.latent_image);
  if (lat && lat.inputs) Object.assign(info, { width: lat.inputs.width, height: lat.inputs.height, batch: lat.inputs.batch_size });
  for (let m = node(s.model), hops = 0; m && hops < 16; m = node(m.inputs?.model), hops++) {
    if (typeof m.inputs?.ckpt_name === 'string') { info.ckpt = m.inputs.ckpt_name; break; }
  }
  return info;
}

function summary(info) {
  const parts = [];
  if (info.ckpt) parts.push(info.ckpt.replace(/\.(safetensors|ckpt|pt|pth|bin)$/, ''));
  if (info.width) parts.push(`${info.width}×${info.height}`);
  if (info.steps) parts.push(`${info.steps} steps`);
  if (info.positive) parts.push(`“${clip(info.positive, 48)}”`);
  return parts.join(' · ') || 'workflow';
}

/* ===== State ===== */

let devices = [];         // /system_stats devices, each + .gpu (from /gpus) and .done (from /metrics)
let queues = [];          // /queue/all queues
let progress = {};        // prompt_id -> {value, max, node}
let prevRunning = new Set();
const mine = new Set();   // prompt ids this page queued
let historyEntries = [];  // [id, entry], newest first
let execSamples = [];     // {t, avg: [seconds or null per device]} (from /metrics deltas)
let execPrev = null;      // last {sum[], count[]}
let execTotals = [];      // per device {sum, count}
let cards = [];           // per device, the card's live elements

/* ===== Connection ===== */

function setConn(state, text) {
  const el = $('#conn');
  el.className = 'conn ' + state;
  $('.conn-text', el).textContent = text;
}

let ws = null, wsDelay = 500;
function connectWs() {
  const q = new URLSearchParams({ clientId: CLIENT_ID, watch: 'all' });
  if (token) q.set('token', token);
  const sock = new WebSocket(ROOT.replace(/^http/, 'ws') + 'ws?' + q);
  ws = sock;
  sock.onopen = () => { wsDelay = 500; setConn('live', 'live'); refreshQueue().catch(() => {}); };
  sock.onmessage = (ev) => {
    if (typeof ev.data !== 'string') return; // binary previews
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    onEvent(m.type, m.data || {});
  };
  sock.onclose = () => {
    if (ws !== sock) return; // replaced (a new token)
    setConn('down', 'reconnecting…');
    setTimeout(connectWs, wsDelay);
    wsDelay = Math.min(wsDelay * 2, 8000);
  };
}

function onEvent(type, d) {
  const pid = d.prompt_id;
  switch (type) {
    case 'status': queueSoon(); break;
    case 'execution_start': progress[pid] ||= { value: 0, max: 0 }; queueSoon(); break;
    case 'executing':
      if (d.node === null || d.node === undefined) finished(pid);
      else { progress[pid] = { value: 0, max: 0, node: d.node }; showProgress(pid); } // a new node: its own steps
      break;
    case 'progress':
      progress[pid] = { value: d.value, max: d.max, node: d.node };
      showProgress(pid);
      break;
    case 'executed': if (d.output && d.output.images) historySoon(); break;
    case 'execution_error':
      if (mine.has(pid)) toast(`Prompt ${shortId(pid)} failed in node ${d.node_id} (${d.node_type}): ${clip(d.exception_message, 200)}`, true);
      finished(pid);
      break;
    case 'execution_interrupted': finished(pid); break;
    case 'execution_success': finished(pid); break;
  }
}

function finished(pid) {
  if (!pid) return;
  delete progress[pid];
  queueSoon();
  historySoon();
  metricsSoon();
}

/* ===== Devices ===== */

async function refreshDevices() {
  const [stats, gpus] = await Promise.all([apiJson('system_stats'), apiJson('gpus').catch(() => ({ gpus: [] }))]);
  const s = stats.system || {};
  $('#meta').textContent = [`kiln ${s.kiln_version || ''}`, `ComfyUI API ${s.comfyui_version || ''}`,
    `${stats.devices.length} device${stats.devices.length === 1 ? '' : 's'}`,
    `RAM ${fmtBytes(s.ram_free)} free of ${fmtBytes(s.ram_total)}`].join(' · ');
  const byDev = {};
  for (const g of gpus.gpus || []) byDev[g.device] = g;
  const fresh = stats.devices.map((d, i) => Object.assign({}, d, { gpu: byDev[i], done: devices[i]?.done }));
  const rebuilt = fresh.length !== devices.length;
  devices = fresh;
  if (rebuilt) { buildCards(); fillDeviceSelects(); }
  renderDevices();
}

function buildCards() {
  cards = devices.map((d, i) => {
    const c = {};
    c.name = h('h3', {});
    c.state = h('span', { class: 'state' }, 'idle');
    c.memFill = h('span');
    c.memText = h('b');
    c.memLabel = h('span', {}, d.type === 'cpu' ? 'RAM' : 'VRAM');
    c.temp = h('dd');
    c.util = h('dd');
    c.queued = h('dd');
    c.done = h('dd');
    c.runText = h('span', {}, 'idle');
    c.runVal = h('b');
    c.fill = h('span');
    c.bar = h('div', { class: 'bar progress', role: 'progressbar', 'aria-label': `Progress on device ${i}`,
      'aria-valuemin': 0, 'aria-valuemax': 1, 'aria-valuenow': 0 }, c.fill);
    c.el = h('article', { class: 'device', dataset: { device: i }, 'aria-label': `Device ${i}` },
      h('header', {}, h('span', { class: 'idx' }, String(i)), c.name, c.state),
      h('div', { class: 'meter' }, h('div', { class: 'row' }, c.memLabel, c.memText), h('div', { class: 'bar mem' }, c.memFill)),
      h('dl', { class: 'stats' },
        h('div', {}, h('dt', {}, 'Temp'), c.temp), h('div', {}, h('dt', {}, 'Util'), c.util),
        h('div', {}, h('dt', {}, 'Queue'), c.queued), h('div', {}, h('dt', {}, 'Done'), c.done)),
      h('div', { class: 'meter run' }, h('div', { class: 'row' }, c.runText, c.runVal), c.bar));
    return c;
  });
  replaceKeepFocus($('#devices'), cards.map((c) => c.el));
}

function renderDevices() {
  devices.forEach((d, i) => {
    const c = cards[i];
    if (!c) return;
    const [kind, ...model] = d.name.split(' '); // "cpu:0 Intel(R) Xeon(R) ..." / "cuda:1 NVIDIA H100 ..."
    c.name.replaceChildren(kind + ' ', h('span', { class: 'model' }, model.join(' ')));
    c.name.title = d.name;
    const g = d.gpu;
    const total = g?.memory_total ?? d.vram_total, used = g?.memory_used ?? (d.vram_total - d.vram_free);
    c.memText.textContent = `${fmtBytes(used)} / ${fmtBytes(total)}`;
    c.memFill.style.width = total ? Math.min(100, (100 * used) / total).toFixed(1) + '%' : '0';
    const na = d.type === 'cpu' ? 'not measured on CPU devices' : 'not reported';
    c.temp.textContent = g?.temperature_c != null ? `${g.temperature_c} °C` : '—';
    c.temp.title = g?.temperature_c != null ? '' : na;
    c.util.textContent = g?.utilization_pct != null ? `${g.utilization_pct} %` : '—';
    c.util.title = g?.utilization_pct != null ? '' : na;
    const q = queues[i];
    c.queued.textContent = q ? String(q.running_count + q.pending_count) : '—';
    c.queued.title = q ? `${q.running_count} running, ${q.pending_count} pending` : '';
    c.done.textContent = d.done != null ? String(d.done) : '—';
    renderRun(i);
  });
}

// the running prompt of device i and its progress bar
function renderRun(i) {
  const c = cards[i];
  const item = queues[i]?.queue_running?.[0];
  c.el.classList.toggle('busy', !!item);
  c.state.textContent = item ? 'running' : 'idle';
  if (!item) {
    c.runText.textContent = queues[i]?.pending_count ? 'starting…' : 'Idle';
    c.runVal.textContent = '';
    c.fill.style.width = '0';
    c.bar.setAttribute('aria-valuenow', 0);
    c.bar.setAttribute('aria-valuemax', 1);
    c.bar.removeAttribute('aria-valuetext');
    return;
  }
  const [, pid, prompt] = item;
  const p = progress[pid];
  const node = p?.node && prompt?.[p.node] ? `${prompt[p.node].class_type} (node ${p.node})` : 'starting';
  c.runText.textContent = `${shortId(pid)} · ${node}`;
  c.runText.title = pid;
  const max = p?.max || 0, value = Math.min(p?.value || 0, max);
  c.runVal.textContent = max ? `${value} / ${max}` : '';
  c.fill.style.width = max ? ((100 * value) / max).toFixed(1) + '%' : '0';
  c.bar.setAttribute('aria-valuemax', max || 1);
  c.bar.setAttribute('aria-valuenow', value);
  c.bar.setAttribute('aria-valuetext', max ? `step ${value} of ${max}` : 'starting');
  c.bar.dataset.promptId = pid;
}

function showProgress(pid) {
  const i = queues.findIndex((q) => q.queue_running?.[0]?.[1] === pid);
  if (i >= 0 && cards[i]) renderRun(i);
  else queueSoon(); // our view of the queues is behind
}

/* ===== Queue ===== */

let queueSig = '';
async function refreshQueue() {
  const all = await apiJson('queue/all');
  queues = all.queues || [];
  const running = new Set(queues.flatMap((q) => (q.queue_running || []).map((it) => it[1])));
  for (const id of prevRunning) if (!running.has(id)) { delete progress[id]; historySoon(); metricsSoon(); }
  prevRunning = running;
  $('#queue-total').textContent = `${all.total_running} running · ${all.total_pending} pending`;
  renderDevices();
  const sig = JSON.stringify(queues.map((q) => [(q.queue_running || []).map((x) => x[1]), (q.queue_pending || []).map((x) => x[1])]));
  if (sig !== queueSig || !$('#queue .qdev')) { queueSig = sig; renderQueue(); }
}
const queueSoon = later(() => refreshQueue().catch(() => {}), 120);

function renderQueue() {
  const blocks = queues.map((q, i) => {
    const items = [];
    for (const it of q.queue_running || []) items.push(queueItem(it, true));
    const pending = [...(q.queue_pending || [])].sort((a, b) => a[0] - b[0]);
    for (const it of pending) items.push(queueItem(it, false));
    const name = devices[i]?.name || '';
    return h('div', { class: 'qdev', dataset: { device: i } },
      h('div', { class: 'qhead' },
        h('h3', {}, `Device ${i} `, h('small', {}, clip(name, 40))),
        h('button', { class: 'btn ghost small danger', type: 'button', dataset: { key: `clear:${i}`, action: 'clear' },
          disabled: !q.pending_count, onclick: () => clearQueue(i) }, 'Clear pending')),
      items.length ? h('ol', { class: 'qlist' }, items) : h('p', { class: 'empty' }, 'Nothing queued'));
  });
  replaceKeepFocus($('#queue'), blocks.length ? blocks : [h('p', { class: 'empty' }, 'No devices')]);
}

function queueItem(it, running) {
  const [number, pid, prompt, , outputs] = it;
  const text = summary(describe(prompt, outputs));
  const label = running ? `Stop prompt ${shortId(pid)}` : `Cancel prompt ${shortId(pid)}`;
  return h('li', { class: 'qitem' + (running ? ' running' : ''), dataset: { promptId: pid } },
    running ? h('span', { class: 'badge' }, 'running') : h('span', { class: 'num' }, `#${number}`),
    h('span', { class: 'qsum', title: `${pid}\n${text}` }, text),
    h('button', { class: 'btn small', type: 'button', 'aria-label': label, title: label,
      dataset: { key: `${running ? 'stop' : 'cancel'}:${pid}`, action: running ? 'stop' : 'cancel' },
      onclick: () => (running ? interrupt(pid) : cancel(pid)) }, running ? 'Stop' : 'Cancel'));
}

async function cancel(pid) {
  try {
    const res = await postJson('queue', { delete: [pid] });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    toast(`Cancelled prompt ${shortId(pid)}`);
  } catch (e) { toast(`Cannot cancel ${shortId(pid)}: ${e.message}`, true); }
  refreshQueue().catch(() => {});
}

async function interrupt(pid) {
  try {
    const res = await postJson('interrupt', { prompt_id: pid });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    toast(`Stopping prompt ${shortId(pid)}`);
  } catch (e) { toast(`Cannot stop ${shortId(pid)}: ${e.message}`, true); }
  queueSoon();
}

async function clearQueue(i) {
  const n = queues[i]?.pending_count || 0;
  try {
    const res = await postJson('queue', { clear: true }, i);
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    toast(`Cleared ${n} pending prompt${n === 1 ? '' : 's'} on device ${i}`);
  } catch (e) { toast(`Cannot clear device ${i}: ${e.message}`, true); }
  refreshQueue().catch(() => {});
}

/* ===== The form ===== */

const SEED_MAX = 18446744073709551615n;
const FORM_KEYS = ['ckpt', 'prompt', 'negative', 'width', 'height', 'steps', 'cfg', 'sampler', 'scheduler', 'seed', 'batch', 'random', 'device'];

function randomSeed() { // up to 2^50, as ComfyUI's frontend
  const v = crypto.getRandomValues(new Uint32Array(2));
  return String((v[0] % 2 ** 18) * 2 ** 32 + v[1]);
}

function fillSelect(sel, values, keep) {
  const cur = keep ?? sel.value;
  sel.replaceChildren(...values.map(([v, text]) => h('option', { value: v }, text)));
  if (values.some(([v]) => v === cur)) sel.value = cur;
}

function fillDeviceSelects() {
  const opts = [['', 'Automatic (shortest wait)'], ...devices.map((d, i) => [String(i), `${i} · ${clip(d.name, 44)}`])];
  for (const sel of document.querySelectorAll('.device-select')) fillSelect(sel, opts, saved().device);
}

function saved() {
  try { return JSON.parse(localStorage.getItem('kiln.form')) || {}; } catch { return {}; }
}
function save() {
  const f = $('#form-t2i').elements, o = {};
  for (const k of FORM_KEYS) o[k] = f[k].type === 'checkbox' ? f[k].checked : f[k].value;
  localStorage.setItem('kiln.form', JSON.stringify(o));
}

async function loadFormOptions() {
  const [ks, ck] = await Promise.all([apiJson('object_info/KSampler'), apiJson('object_info/CheckpointLoaderSimple')]);
  const req = ks.KSampler?.input?.required || {};
  const f = $('#form-t2i').elements, s = saved();
  const pairs = (list) => (list || []).map((v) => [v, v]);
  fillSelect(f.sampler, pairs(req.sampler_name?.[0]), s.sampler || 'euler');
  fillSelect(f.scheduler, pairs(req.scheduler?.[0]), s.scheduler || 'normal');
  const ckpts = ck.CheckpointLoaderSimple?.input?.required?.ckpt_name?.[0] || [];
  fillSelect(f.ckpt, ckpts.length ? pairs(ckpts) : [['', 'no checkpoint in models/checkpoints']], s.ckpt);
  f.prompt.value = s.prompt ?? 'beautiful scenery nature glass bottle landscape, purple galaxy bottle';
  f.negative.value = s.negative ?? 'text, watermark';
  for (const k of ['width', 'height', 'steps', 'cfg', 'batch']) if (s[k]) f[k].value = s[k];
  f.seed.value = /^\d+$/.test(s.seed || '') ? s.seed : randomSeed();
  if (s.random !== undefined) f.random.checked = s.random;
}

// the API-format graph of a txt2img (ComfyUI's default workflow); seed is a marker string,
// replaced by the digits in the JSON text (seeds go up to 2^64-1, past a JS number)
function txt2img(v) {
  return {
    3: { class_type: 'KSampler', inputs: { seed: '\u0000seed', steps: +v.steps, cfg: +v.cfg, sampler_name: v.sampler,
      scheduler: v.scheduler, denoise: 1, model: ['4', 0], positive: ['6', 0], negative: ['7', 0], latent_image: ['5', 0] } },
    4: { class_type: 'CheckpointLoaderSimple', inputs: { ckpt_name: v.ckpt } },
    5: { class_type: 'EmptyLatentImage', inputs: { width: +v.width, height: +v.height, batch_size: +v.batch } },
    6: { class_type: 'CLIPTextEncode', inputs: { text: v.prompt, clip: ['4', 1] } },
    7: { class_type: 'CLIPTextEncode', inputs: { text: v.negative, clip: ['4', 1] } },
    8: { class_type: 'VAEDecode', inputs: { samples: ['3', 0], vae: ['4', 2] } },
    9: { class_type: 'SaveImage', inputs: { filename_prefix: 'kiln', images: ['8', 0] } },
  };
}

function formMsg(...children) { replaceKeepFocus($('#form-msg'), children); }

function showSubmitError(j, status) {
  const e = j?.error;
  const items = [];
  for (const [id, ne] of Object.entries(j?.node_errors || {}))
    for (const er of ne.errors || []) items.push(h('li', {}, `node ${id} (${ne.class_type}): ${er.message}${er.details ? ' — ' + er.details : ''}`));
  formMsg(h('div', { class: 'bad' }, e ? e.message : `HTTP ${status}`, items.length ? h('ul', {}, items) : null));
}

// POSTs /prompt; returns the reply, or null after showing why not
async function submit(promptJsonText, device, button) {
  button.disabled = true;
  try {
    const body = `{"prompt": ${promptJsonText}, "client_id": ${JSON.stringify(CLIENT_ID)}}`;
    const res = await postJson('prompt', body, device);
    const j = await res.json().catch(() => null);
    if (!res.ok || !j?.prompt_id) { showSubmitError(j, res.status); return null; }
    mine.add(j.prompt_id);
    const where = device === '' ? 'the device with the shortest wait' : `device ${device}`;
    formMsg(h('span', { class: 'ok', dataset: { promptId: j.prompt_id } }, `Queued #${j.number} (${shortId(j.prompt_id)}) on ${where}.`));
    refreshQueue().catch(() => {});
    return j;
  } catch (e) {
    formMsg(h('span', { class: 'bad' }, `Not queued: ${e.message}`));
    return null;
  } finally {
    button.disabled = false;
  }
}

async function submitTxt2img(ev) {
  ev.preventDefault();
  const form = $('#form-t2i'), f = form.elements;
  const v = Object.fromEntries(FORM_KEYS.map((k) => [k, f[k].value]));
  const bad = [...form.querySelectorAll('input, select')].find((el) => !el.checkValidity());
  const seedOk = /^\d{1,20}$/.test(v.seed) && BigInt(v.seed) <= SEED_MAX;
  if (bad || !seedOk || !v.ckpt) {
    const why = !v.ckpt ? 'Pick a checkpoint (models/checkpoints is empty?).'
      : bad ? `${bad.closest('label').firstChild.textContent.trim()}: ${bad.validationMessage}`
      : 'Seed: a whole number from 0 to 18446744073709551615.';
    formMsg(h('span', { class: 'bad' }, why));
    (bad || (seedOk ? f.ckpt : f.seed)).focus();
    return;
  }
  save();
  const text = JSON.stringify(txt2img(v)).replace('"\\u0000seed"', v.seed);
  const j = await submit(text, v.device, $('#f-submit'));
  if (j && f.random.checked) { f.seed.value = randomSeed(); save(); }
}

// the workflow tab: API format only (a /prompt body is unwrapped; a UI workflow is refused)
async function submitWorkflow(ev) {
  ev.preventDefault();
  const text = $('#w-json').value.trim();
  let obj;
  try { obj = JSON.parse(text); } catch (e) {
    formMsg(h('span', { class: 'bad' }, `Not JSON: ${e.message}`));
    $('#w-json').focus();
    return;
  }
  if (obj && typeof obj.prompt === 'object' && !obj.class_type) obj = obj.prompt;
  let why = null;
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) why = 'The workflow must be a JSON object of nodes.';
  else if (Array.isArray(obj.nodes) && Array.isArray(obj.links))
    why = 'This is a UI workflow (nodes and links). In ComfyUI, use Export (API) and paste that file.';
  else if (!Object.values(obj).every((n) => n && typeof n.class_type === 'string'))
    why = 'Every node needs a class_type: this is not an API-format workflow.';
  if (why) { formMsg(h('span', { class: 'bad' }, why)); $('#w-json').focus(); return; }
  await submit(JSON.stringify(obj), $('#w-device').value, $('#w-submit'));
}

function readFileInto(file) {
  file.text().then((t) => { $('#w-json').value = t; formMsg(h('span', {}, `Loaded ${file.name}.`)); });
}

function selectTab(tab, focus) {
  for (const t of document.querySelectorAll('[role=tab]')) {
    const on = t === tab;
    t.setAttribute('aria-selected', on);
    t.tabIndex = on ? 0 : -1;
    $('#' + t.getAttribute('aria-controls')).hidden = !on;
  }
  if (focus) tab.focus();
}

function setupForm() {
  $('#form-t2i').addEventListener('submit', submitTxt2img);
  $('#form-wf').addEventListener('submit', submitWorkflow);
  $('#form-t2i').addEventListener('change', save);
  for (const form of [$('#form-t2i'), $('#form-wf')])
    form.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); } });
  const tabs = [...document.querySelectorAll('[role=tab]')];
  for (const t of tabs) {
    t.addEventListener('click', () => selectTab(t, false));
    t.addEventListener('keydown', (e) => {
      const k = tabs.indexOf(t) + (e.key === 'ArrowRight' ? 1 : e.key === 'ArrowLeft' ? -1 : 0);
      if (k !== tabs.indexOf(t)) { e.preventDefault(); selectTab(tabs[(k + tabs.length) % tabs.length], true); }
    });
  }
  $('#w-file').addEventListener('change', (e) => e.target.files[0] && readFileInto(e.target.files[0]));
  const ta = $('#w-json');
  ta.addEventListener('dragover', (e) => e.preventDefault());
  ta.addEventListener('drop', (e) => { if (e.dataTransfer.files[0]) { e.preventDefault(); readFileInto(e.dataTransfer.files[0]); } });
  $('#token-bar').addEventListener('submit', (e) => {
    e.preventDefault();
    token = $('#token-input').value.trim();
    localStorage.setItem('kiln.token', token);
    $('#token-bar').hidden = true;
    const old = ws;
    ws = null;
    if (old) old.close();
    start();
  });
}

/* ===== History: gallery and viewer ===== */

const GALLERY_MAX = 24;
let gallerySig = '';

async function refreshHistory() {
  const hist = await apiJson('history?max_items=100');
  historyEntries = Object.entries(hist).reverse();
  const images = [];
  for (const [id, e] of historyEntries) {
    for (const [node, out] of Object.entries(e.outputs || {}))
      for (const img of out.images || []) if (images.length < GALLERY_MAX) images.push({ id, e, node, img });
  }
  const sig = images.map((x) => x.img.filename + x.img.subfolder + x.img.type).join('|');
  if (sig !== gallerySig) {
    gallerySig = sig;
    const thumbs = images.map((x, k) => {
      const info = describe(x.e.prompt?.[2], x.e.prompt?.[4]);
      const label = `Image ${x.img.filename}${info.positive ? ': ' + clip(info.positive, 80) : ''}`;
      return h('button', { class: 'thumb', type: 'button', 'aria-label': label, title: label,
        dataset: { key: `img:${x.img.type}/${x.img.subfolder}/${x.img.filename}`, promptId: x.id },
        onclick: () => openViewer(x, info) },
      h('img', { src: viewUrl(x.img), alt: '', loading: k < 8 ? 'eager' : 'lazy', decoding: 'async' }),
      h('span', { class: 'cap' }, info.width ? `${info.width}×${info.height} · ${info.steps} steps` : x.img.filename));
    });
    replaceKeepFocus($('#gallery'), thumbs.length ? thumbs : [h('p', { class: 'empty' }, 'No images yet.')]);
    $('#gallery-count').textContent = thumbs.length ? `newest ${thumbs.length}` : '';
  }
  drawIpm();
}
const historySoon = later(() => refreshHistory().catch(() => {}), 300);

// the entry's run time from its status messages (execution_start .. last message)
function runTime(e) {
  const msgs = e.status?.messages || [];
  const t0 = msgs.find((m) => m[0] === 'execution_start')?.[1]?.timestamp;
  const t1 = msgs.length ? msgs[msgs.length - 1][1]?.timestamp : null;
  return t0 && t1 ? (t1 - t0) / 1000 : null;
}

function openViewer(x, info) {
  const dlg = $('#viewer');
  const url = viewUrl(x.img);
  $('#viewer-img').src = url;
  $('#viewer-img').classList.toggle('small', (info.width || 1024) < 256);
  $('#viewer-img').alt = info.positive ? clip(info.positive, 200) : x.img.filename;
  $('#viewer-link').href = url;
  $('#viewer-download').href = url;
  $('#viewer-download').setAttribute('download', x.img.filename);
  $('#viewer-title').textContent = x.img.filename;
  const rows = [
    ['Prompt', info.positive], ['Negative', info.negative], ['Checkpoint', info.ckpt],
    ['Size', info.width && `${info.width} × ${info.height}${info.batch > 1 ? ` (batch ${info.batch})` : ''}`],
    ['Seed', info.seed], ['Steps', info.steps], ['CFG', info.cfg], ['Sampler', info.sampler], ['Scheduler', info.scheduler],
    ['Status', x.e.status?.status_str], ['Run time', fmtSecs(runTime(x.e))], ['Prompt ID', x.id], ['Output node', x.node],
  ];
  $('#viewer-meta').replaceChildren(...rows.filter(([, v]) => v !== undefined && v !== null && v !== '')
    .flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))]));
  const reuse = $('#viewer-reuse');
  reuse.hidden = !info.steps;
  reuse.onclick = () => { useSettings(info); dlg.close(); };
  dlg.showModal();
}

function useSettings(info) {
  const f = $('#form-t2i').elements;
  const set = (k, v) => { if (v !== undefined && v !== null) f[k].value = String(v); };
  set('ckpt', info.ckpt); set('prompt', info.positive); set('negative', info.negative);
  set('width', info.width); set('height', info.height); set('steps', info.steps); set('cfg', info.cfg);
  set('sampler', info.sampler); set('scheduler', info.scheduler); set('seed', info.seed); set('batch', info.batch);
  f.random.checked = false;
  save();
  selectTab($('#tab-t2i'), false);
  f.prompt.focus();
  formMsg(h('span', {}, 'Settings copied from the image.'));
}

/* ===== Charts (canvas) ===== */

// a canvas sized to its box in device pixels; returns [ctx, width, height] in CSS pixels
function canvas2d(cv) {
  const r = cv.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(r.width)), hgt = Math.max(1, Math.round(r.height));
  if (cv.width !== w * dpr || cv.height !== hgt * dpr) { cv.width = w * dpr; cv.height = hgt * dpr; }
  const ctx = cv.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, hgt);
  return [ctx, w, hgt];
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v)), m = v / p;
  return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
}

// axes, grid lines and labels shared by both charts; returns the plot box
function frame(ctx, w, hgt, ymax, fmtY, left, right) {
  const css = getComputedStyle(document.body);
  const muted = css.getPropertyValue('--muted'), line = css.getPropertyValue('--line');
  const box = { x: 44, y: 8, w: w - 52, h: hgt - 28 };
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = muted;
  ctx.strokeStyle = line;
  ctx.lineWidth = 1;
  for (let k = 0; k <= 2; k++) {
    const y = Math.round(box.y + box.h - (k * box.h) / 2) + 0.5;
    ctx.beginPath(); ctx.moveTo(box.x, y); ctx.lineTo(box.x + box.w, y); ctx.stroke();
    ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
    ctx.fillText(fmtY((k * ymax) / 2), box.x - 6, y);
  }
  ctx.textBaseline = 'top';
  ctx.textAlign = 'left'; ctx.fillText(left, box.x, box.y + box.h + 6);
  ctx.textAlign = 'right'; ctx.fillText(right, box.x + box.w, box.y + box.h + 6);
  return { box, muted };
}

function emptyNote(ctx, box, muted, text) {
  ctx.fillStyle = muted; ctx.textAlign = 'center'; ctx.textBaseline = 'middle';
  ctx.fillText(text, box.x + box.w / 2, box.y + box.h / 2);
}

const IPM_MINUTES = 15;
function drawIpm() {
  const cv = $('#chart-ipm');
  const [ctx, w, hgt] = canvas2d(cv);
  const now = Date.now(), bins = new Array(IPM_MINUTES).fill(0);
  for (const [, e] of historyEntries) {
    const msgs = e.status?.messages || [];
    const t = msgs.length ? msgs[msgs.length - 1][1]?.timestamp : null;
    if (!t || e.status?.status_str !== 'success') continue;
    const k = IPM_MINUTES - 1 - Math.floor((now - t) / 60000);
    if (k < 0 || k >= IPM_MINUTES) continue;
    for (const out of Object.values(e.outputs || {})) bins[k] += (out.images || []).length;
  }
  const ymax = Math.max(2, niceMax(Math.max(...bins)));
  const { box, muted } = frame(ctx, w, hgt, ymax, (v) => String(Math.round(v)), `${IPM_MINUTES} min ago`, 'now');
  const total = bins.reduce((a, b) => a + b, 0);
  cv.setAttribute('aria-label', `Images per minute over the last ${IPM_MINUTES} minutes: ${total} images in all, ${bins[IPM_MINUTES - 1]} this minute`);
  if (!total) { emptyNote(ctx, box, muted, 'No images in the last 15 minutes'); return; }
  const bw = box.w / IPM_MINUTES;
  ctx.fillStyle = getComputedStyle(document.body).getPropertyValue('--accent');
  bins.forEach((v, k) => {
    if (!v) return;
    const bh = (v / ymax) * box.h;
    ctx.fillRect(box.x + k * bw + 2, box.y + box.h - bh, Math.max(1, bw - 4), bh);
  });
}

const EXEC_WINDOW = 10 * 60 * 1000; // ms shown
async function refreshMetrics() {
  const text = await (await api('metrics')).text();
  const sum = [], count = [], done = [];
  for (const line of text.split('\n')) {
    const m = line.match(/^(kiln_exec_seconds_sum|kiln_exec_seconds_count|kiln_tasks_total)\{([^}]*)\}\s+(\S+)/);
    if (!m) continue;
    const dev = +(/device="(\d+)"/.exec(m[2]) || [])[1];
    const v = Number(m[3]);
    if (m[1] === 'kiln_exec_seconds_sum') sum[dev] = v;
    else if (m[1] === 'kiln_exec_seconds_count') count[dev] = v;
    else done[dev] = v;
  }
  devices.forEach((d, i) => { d.done = done[i]; });
  renderDevices();
  execTotals = sum.map((s, i) => ({ sum: s, count: count[i] || 0 }));
  const now = Date.now();
  if (execPrev) {
    const avg = sum.map((s, i) => {
      const dc = (count[i] || 0) - (execPrev.count[i] || 0);
      return dc > 0 ? (s - (execPrev.sum[i] || 0)) / dc : null;
    });
    execSamples.push({ t: now, avg });
  }
  execPrev = { sum, count };
  execSamples = execSamples.filter((s) => now - s.t <= EXEC_WINDOW);
  drawExec();
}

const metricsSoon = later(() => refreshMetrics().catch(() => {}), 300);

function drawExec() {
  const cv = $('#chart-exec');
  const [ctx, w, hgt] = canvas2d(cv);
  const now = Date.now();
  const vals = execSamples.flatMap((s) => s.avg.filter((v) => v != null));
  const ymax = niceMax(vals.length ? Math.max(...vals) : 1);
  const { box, muted } = frame(ctx, w, hgt, ymax, (v) => fmtSecs(v).replace(' ', ''), '10 min ago', 'now');
  if (!vals.length) emptyNote(ctx, box, muted, 'No prompt finished since this page opened');
  const x = (t) => box.x + box.w * (1 - (now - t) / EXEC_WINDOW);
  const y = (v) => box.y + box.h * (1 - v / ymax);
  execTotals.forEach((_, i) => {
    ctx.strokeStyle = ctx.fillStyle = devColor(i);
    ctx.lineWidth = 2;
    let prev = null;
    for (const s of execSamples) {
      const v = s.avg[i];
      if (v == null) continue;
      if (prev) { ctx.beginPath(); ctx.moveTo(x(prev.t), y(prev.v)); ctx.lineTo(x(s.t), y(v)); ctx.stroke(); }
      ctx.beginPath(); ctx.arc(x(s.t), y(v), 2.5, 0, 2 * Math.PI); ctx.fill();
      prev = { t: s.t, v };
    }
  });
  const items = execTotals.map((t, i) => h('li', {}, h('i', { style: `background:${devColor(i)}` }),
    `${i} · ${t.count ? `${fmtSecs(t.sum / t.count)} average, ${t.count} prompt${t.count === 1 ? '' : 's'}` : 'no prompt yet'}`));
  $('#legend-exec').replaceChildren(...items);
  cv.setAttribute('aria-label', 'Execution time per prompt, by device: ' + items.map((li) => li.textContent).join('; '));
}

/* ===== Start ===== */

let started = false;
async function start() {
  try {
    await refreshDevices();
    await Promise.all([refreshQueue(), loadFormOptions(), refreshHistory(), refreshMetrics()]);
  } catch (e) {
    setConn('down', 'offline');
    if ($('#token-bar').hidden) toast(`Cannot reach kiln: ${e.message}`, true);
  }
  connectWs();
  if (started) return;
  started = true;
  const every = (ms, fn) => setInterval(() => { if (!document.hidden) fn().catch(() => {}); }, ms);
  every(2000, refreshQueue);
  every(5000, refreshDevices);
  every(5000, refreshMetrics);
  every(15000, refreshHistory);
  new ResizeObserver(later(() => { drawIpm(); drawExec(); }, 50)).observe($('.charts'));
}

setupForm();
start();
