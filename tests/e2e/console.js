// tests/e2e/console.js -- kiln's web console end to end, in headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core), against a running `kiln serve` with two CPU
// devices and the tiny checkpoint `tiny.safetensors` (tests/cli/console.sh starts it):
//  1. the page loads with no script error, shows both devices, fills the form's lists from
//     /object_info; every form control is reachable with Tab and shows a focus ring;
//  2. a txt2img queued through the form (keyboard: Ctrl+Enter) on device 0: its progress bar
//     moves step by step (aria-valuenow and the fill rise at least 10 times while it runs: live
//     over the WebSocket), its image appears in the gallery at the size asked for, and the
//     viewer shows its prompt (opened with Enter, closed with Escape);
//  3. two prompts on device 1: the pending one is cancelled with its Cancel button (gone from
//     /queue at once, never in /history), the running one stopped with its Stop button;
//  4. no horizontal scrolling at 1280x800 nor at 390x844; screenshots of both kept.
// Usage: node console.js URL ARTIFACT_DIR. Prints "ok: ..." per step and the screenshots'
// paths; exits 1 at the first failure. Every wait is bounded (the whole run < 2 min).
'use strict';
const path = require('path');
const { chromium } = require('playwright-core');

const [URL_, ART] = process.argv.slice(2);
if (!URL_ || !ART) { console.error('usage: node console.js URL ARTIFACT_DIR'); process.exit(2); }
const BASE = URL_.replace(/\/?$/, '/');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const t0 = Date.now();
const shots = [];

function ok(what) { console.log(`ok: ${what} (${((Date.now() - t0) / 1000).toFixed(1)} s)`); }
function check(cond, what) { if (!cond) throw new Error(what); }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function apiGet(p) {
  const res = await fetch(BASE + p);
  if (!res.ok) throw new Error(`GET ${p}: HTTP ${res.status}`);
  return res.json();
}
// polls fn() every `every` ms until it returns a truthy value; throws after `ms`
async function until(what, fn, ms = 30000, every = 100) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${ms / 1000} s: ${what}`);
    await sleep(every);
  }
}
const inQueue = (q, id) => [...q.queue_running, ...q.queue_pending].some((it) => it[1] === id);

// fills the txt2img form (programmatically: typing is checked on the prompt only)
async function fillForm(page, v) {
  for (const [k, val] of Object.entries(v)) {
    const sel = `#f-${k}`;
    if (await page.$eval(sel, (el) => el.tagName === 'SELECT')) await page.selectOption(sel, String(val));
    else await page.fill(sel, String(val));
  }
}
// queues the form with the keyboard; returns the POST /prompt reply
async function queueByKeyboard(page) {
  const reply = page.waitForResponse((r) => r.url().endsWith('/prompt') && r.request().method() === 'POST', { timeout: 15000 });
  await page.focus('#f-prompt');
  await page.keyboard.press('Control+Enter');
  const res = await reply;
  check(res.status() === 200, `POST /prompt from the form: HTTP ${res.status()} ${await res.text()}`);
  return res.json();
}

async function noOverflow(page, width) {
  const w = await page.evaluate(() => document.documentElement.scrollWidth);
  check(w <= width, `the page scrolls sideways at ${width} px wide (content is ${w} px)`);
}

async function shot(page, name, fullPage) {
  const file = path.join(ART, name);
  await page.screenshot({ path: file, fullPage });
  shots.push(file);
}

async function main() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM, headless: true,
    args: [...(process.getuid && process.getuid() === 0 ? ['--no-sandbox'] : []), '--disable-dev-shm-usage'],
  });
  try {
    const errors = [];
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(`console error: ${m.text()}`); });
    page.setDefaultTimeout(15000);

    // ===== 1. load, devices, form lists, keyboard =====
    await page.goto(BASE);
    await page.waitForSelector('#devices .device[data-device="1"]');
    check(await page.locator('#devices .device').count() === 2, 'two device cards');
    await until('the form lists the tiny checkpoint', () => page.$eval('#f-ckpt', (s) => [...s.options].some((o) => o.value === 'tiny.safetensors')), 15000);
    const ks = (await apiGet('object_info/KSampler')).KSampler.input.required;
    const samplers = await page.$$eval('#f-sampler option', (os) => os.map((o) => o.value));
    check(JSON.stringify(samplers) === JSON.stringify(ks.sampler_name[0]), 'the sampler list is /object_info\'s');
    await until('the WebSocket is live', () => page.$eval('#conn', (e) => e.classList.contains('live')), 10000);
    ok('console loaded: 2 devices, the form\'s lists from /object_info, WebSocket live');

    const controls = ['f-ckpt', 'f-prompt', 'f-negative', 'f-width', 'f-height', 'f-steps', 'f-cfg', 'f-sampler',
      'f-scheduler', 'f-seed', 'f-batch', 'f-random', 'f-device', 'f-submit'];
    await page.evaluate(() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); });
    const reached = new Set();
    for (let i = 0; i < 80 && controls.some((c) => !reached.has(c)); i++) {
      await page.keyboard.press('Tab');
      const id = await page.evaluate(() => document.activeElement && document.activeElement.id);
      if (id) reached.add(id);
      if (id === 'f-steps') { // the focus ring is visible where the keyboard is
        const ring = await page.$eval('#f-steps', (el) => { const s = getComputedStyle(el); return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0; });
        check(ring, 'a focused field shows a focus ring');
      }
    }
    const missed = controls.filter((c) => !reached.has(c));
    check(!missed.length, `not reachable with Tab: ${missed.join(', ')}`);
    await page.focus('#tab-t2i');
    await page.keyboard.press('ArrowRight');
    check(await page.$eval('#tab-wf', (t) => t.getAttribute('aria-selected') === 'true' && document.activeElement === t), 'ArrowRight selects the Workflow tab');
    check(await page.isVisible('#w-json') && !(await page.isVisible('#f-prompt')), 'the Workflow tab shows its form');
    await page.keyboard.press('ArrowLeft');
    check(await page.isVisible('#f-prompt'), 'ArrowLeft comes back to txt2img');
    ok(`keyboard: all ${controls.length} form controls reachable with Tab, focus ring shown, tabs by arrow keys`);

    // ===== 2. txt2img through the form: progress, gallery, viewer =====
    const text = 'a kiln at night, embers glowing';
    const seed = 1000 + (Date.now() % 1000000); // fresh inputs: an identical prompt would come from the cache
    const steps = +(process.env.KILN_E2E_STEPS || 40); // console.sh: more in a Release build, which runs faster
    await fillForm(page, { ckpt: 'tiny.safetensors', width: 64, height: 64, steps, cfg: 7, batch: 1, device: '0',
      sampler: 'euler', scheduler: 'normal', seed });
    await page.fill('#f-prompt', '');
    await page.focus('#f-prompt');
    await page.keyboard.type(text);
    const a = await queueByKeyboard(page);
    const idA = a.prompt_id;
    check(await page.$eval('#form-msg', (m, id) => !!m.querySelector(`[data-prompt-id="${id}"]`), idA), 'the form says the prompt was queued');
    const bar = '#devices .device[data-device="0"] [role=progressbar]';
    const seen = [];
    await until(`prompt ${idA} finishes`, async () => {
      const v = await page.$eval(bar, (b) => ({ id: b.dataset.promptId, now: +b.getAttribute('aria-valuenow'), max: +b.getAttribute('aria-valuemax'),
        width: parseFloat(b.firstElementChild.style.width) || 0 }));
      if (v.id === idA && v.max === steps && (!seen.length || seen[seen.length - 1].now !== v.now)) {
        seen.push(v);
        if (seen.length === 12) await shot(page, 'console-1280x800-running.png', false);
      }
      const h = await apiGet(`history/${idA}`);
      return h[idA];
    }, 60000, 40);
    // live over the WebSocket: nearly every step shows (polling /queue/all every 2 s would show a few)
    const rises = seen.filter((v, i) => i > 0 && v.now > seen[i - 1].now && v.width > seen[i - 1].width).length;
    check(rises >= 10, `the progress bar of device 0 did not move step by step: values seen ${JSON.stringify(seen.map((v) => v.now))}`);
    check(seen.every((v, i) => i === 0 || v.now >= seen[i - 1].now), `progress went backwards: ${JSON.stringify(seen.map((v) => v.now))}`);
    ok(`progress bar moved: ${seen.length} values seen, ${seen[0].now} → ${seen[seen.length - 1].now} of ${steps}`);

    const entry = (await apiGet(`history/${idA}`))[idA];
    check(entry.status.status_str === 'success', `prompt ${idA}: ${JSON.stringify(entry.status)}`);
    const imgFile = Object.values(entry.outputs).flatMap((o) => o.images || [])[0].filename;
    const thumb = `#gallery .thumb[data-prompt-id="${idA}"]`;
    await page.waitForSelector(`${thumb} img`, { timeout: 20000 });
    const size = await until('the thumbnail loads', () => page.$eval(`${thumb} img`, (i) => i.complete && i.naturalWidth ? [i.naturalWidth, i.naturalHeight, i.src] : null), 10000);
    check(size[0] === 64 && size[1] === 64, `the gallery image is ${size[0]}x${size[1]}, not the 64x64 asked for`);
    check(size[2].includes(encodeURIComponent(imgFile)) || size[2].includes(imgFile), `the thumbnail is not ${imgFile}: ${size[2]}`);
    ok(`image ${imgFile} in the gallery (64x64, through /view)`);

    await page.focus(thumb);
    await page.keyboard.press('Enter');
    await page.waitForSelector('#viewer[open]');
    const meta = await page.$eval('#viewer-meta', (d) => d.innerText);
    check(meta.includes(text) && meta.includes(String(seed)) && meta.includes(idA), `the viewer's metadata lacks the prompt, seed or id: ${meta}`);
    await until('the full image loads', () => page.$eval('#viewer-img', (i) => i.complete && i.naturalWidth === 64), 10000);
    await shot(page, 'console-viewer-1280x800.png', false);
    await page.keyboard.press('Escape');
    await until('the viewer closes', async () => !(await page.$('#viewer[open]')), 5000);
    check(await page.evaluate((sel) => document.activeElement === document.querySelector(sel), thumb), 'focus goes back to the thumbnail');
    ok('viewer: opened with Enter, shows the prompt, seed and id, closed with Escape');

    // ===== 3. cancel a pending prompt, stop the running one =====
    await fillForm(page, { steps: 400, device: '1', seed: seed + 1 });
    const b1 = (await queueByKeyboard(page)).prompt_id;
    await fillForm(page, { seed: seed + 2 });
    const b2 = (await queueByKeyboard(page)).prompt_id;
    const q1 = await apiGet('queue/all');
    check(q1.queues[1].queue_pending.some((it) => it[1] === b2), `prompt ${b2} is not pending on device 1: ${JSON.stringify(q1.queues[1])}`);
    const cancelBtn = `#queue li[data-prompt-id="${b2}"] button[data-action=cancel]`;
    await page.waitForSelector(cancelBtn);
    await page.click(cancelBtn);
    await until(`prompt ${b2} leaves /queue`, async () => !inQueue(await apiGet('queue'), b2), 5000);
    await page.waitForSelector(`#queue li[data-prompt-id="${b2}"]`, { state: 'detached', timeout: 5000 });
    const q2 = await apiGet('queue');
    check(q2.queue_running.some((it) => it[1] === b1), `prompt ${b1} should still run: ${JSON.stringify(q2.queue_running.map((it) => it[1]))}`);
    ok(`pending prompt ${b2.slice(0, 8)} cancelled from the queue panel: gone from /queue`);

    const stopBtn = `#queue li[data-prompt-id="${b1}"] button[data-action=stop]`;
    await page.waitForSelector(stopBtn);
    await page.click(stopBtn);
    const hb1 = await until(`prompt ${b1} in /history after Stop`, async () => (await apiGet(`history/${b1}`))[b1], 30000);
    check(hb1.status.status_str === 'error' && hb1.status.messages.some((m) => m[0] === 'execution_interrupted'), `prompt ${b1} was not interrupted: ${JSON.stringify(hb1.status)}`);
    await sleep(1500); // device 1 is free: a prompt still queued would be running now
    const all = await apiGet('queue/all');
    check(!all.queues.some((q) => inQueue(q, b2)), `cancelled prompt ${b2} is back in a queue`);
    check(!(await apiGet(`history/${b2}`))[b2], `cancelled prompt ${b2} reached /history`);
    await until('device 1 shows idle', () => page.$eval('#devices .device[data-device="1"] .state', (s) => s.textContent === 'idle'), 5000);
    ok(`running prompt ${b1.slice(0, 8)} stopped with its Stop button; the cancelled one never ran nor reached /history`);

    // ===== 4. layouts and screenshots =====
    await page.evaluate(() => window.scrollTo(0, 0));
    await noOverflow(page, 1280);
    await shot(page, 'console-1280x800.png', false);
    await shot(page, 'console-1280x800-full.png', true);
    const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    phone.on('pageerror', (e) => errors.push(`page error (phone): ${e.message}`));
    await phone.goto(BASE);
    await phone.waitForSelector(`#gallery .thumb[data-prompt-id="${idA}"] img`);
    await until('phone thumbnails load', () => phone.$eval(`#gallery .thumb[data-prompt-id="${idA}"] img`, (i) => i.complete && i.naturalWidth > 0), 10000);
    await noOverflow(phone, 390);
    await shot(phone, 'console-390x844.png', false);
    await shot(phone, 'console-390x844-full.png', true);
    ok('no sideways scrolling at 1280x800 nor at 390x844');

    check(!errors.length, `the page reported errors:\n${errors.join('\n')}`);
    ok('no script errors');
  } finally {
    await browser.close();
  }
}

main().then(() => {
  for (const s of shots) console.log(`screenshot: ${s}`);
  console.log('console e2e: passed');
}, (e) => {
  for (const s of shots) console.log(`screenshot: ${s}`);
  console.error(`FAIL: ${e.message}`);
  process.exit(1);
});
