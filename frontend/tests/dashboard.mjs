// The dashboard, job, API and contribute pages in headless Chromium, driven by
// server/tests/integration/dashboard_browser.rs (which starts the master, submits a mandelbrot job, and
// starts hand-driven volunteers once this script prints `ready`).
//
//   node frontend/tests/dashboard.mjs <base-url> <admin-token> <job-id> <volunteer-id> <display-name>
//
// Checks, on the DOM and on the chart's own data:
//   /dashboard   the job goes to 100% in the jobs table; the plot receives samples, some with
//                results per second above zero; the chunk map ends all accepted; the
//                leaderboard shows the volunteer's display name as text (no markup made of it).
//   job.html     progress 100%, an event per chunk, the picture (complete, the job's size).
//   api.html     the OpenAPI document rendered, with the routes of this issue.
//   /            the contribute page's credit section for the volunteer's identity; a bad
//                display name is refused with the API's message.
// No Content-Security-Policy violation and no page error anywhere. Prints a JSON summary as
// the last line of stdout and exits 0; on failure prints why and exits 1.

import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const TIMEOUT_MS = Number(process.env.GRID_BROWSER_JOB_TIMEOUT_MS || 120_000);

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

function log(message) {
  process.stderr.write(`[dashboard.mjs ${new Date().toISOString().slice(11, 23)}] ${message}\n`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `probe` (run in the page) until `done(value)`; returns the last value. */
async function waitFor(page, probe, arg, done, what, timeoutMs = TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await page.evaluate(probe, arg);
    if (done(value)) return value;
    check(Date.now() < deadline, `${what} did not happen within ${timeoutMs / 1000} s: ${JSON.stringify(value)}`);
    await sleep(100);
  }
}

async function openPage(context, url, problems, allowedStatuses = []) {
  const page = await context.newPage();
  page.on('pageerror', (error) => problems.push(`${url}: page error: ${error.message}`));
  page.on('console', (message) => {
    // Refused requests the test makes on purpose also log a console error.
    if (message.type() === 'error' && !/status of (422)/.test(message.text())) {
      problems.push(`${url}: console error: ${message.text()}`);
    }
  });
  page.on('response', (response) => {
    if (response.status() >= 400 && !allowedStatuses.includes(response.status())) {
      problems.push(`${url}: HTTP ${response.status()} for ${response.url()}`);
    }
  });
  const response = await page.goto(url);
  check(response && response.status() === 200, `${url} answered ${response?.status()}`);
  const csp = response.headers()['content-security-policy'] || '';
  check(csp.includes("script-src 'self'"), `${url}: no CSP: ${csp}`);
  return page;
}

async function main() {
  const [base, token, jobId, volunteerId, displayName] = process.argv.slice(2);
  if (!base || !token || !jobId || !volunteerId || !displayName) {
    process.stderr.write('usage: dashboard.mjs <base-url> <admin-token> <job-id> <volunteer-id> <display-name>\n');
    process.exit(2);
  }
  const job = Number(jobId);
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  const summary = {};
  const problems = [];
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await context.addInitScript(() => {
      window.__cspViolations = [];
      document.addEventListener('securitypolicyviolation', (event) => {
        window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI}`);
      });
    });

    // The dashboard, before any work: public figures, then the jobs with the token.
    const dashboard = await openPage(context, `${base}/dashboard`, problems);
    await waitFor(dashboard, () => document.getElementById('live').dataset.state, null,
      (state) => state === 'open', 'the live feed connecting');
    await dashboard.fill('#token', token);
    await dashboard.click('#token-form button[type="submit"]');
    const before = await waitFor(dashboard, (id) => {
      const row = document.querySelector(`#jobs tr[data-job-id="${id}"]`);
      return row && { percent: row.querySelector('.percent').textContent, state: row.dataset.state };
    }, job, Boolean, 'the job appearing in the jobs table');
    check(before.percent === '0%', `the job starts at 0%: ${JSON.stringify(before)}`);
    const pointsBefore = await dashboard.evaluate(() => window.gridDashboard.plot.data[0].length);
    log(`dashboard shows job ${job} at ${before.percent}; the plot has ${pointsBefore} points`);
    process.stdout.write('ready\n');

    // The volunteers compute now: watch the job go to 100% and the plot move.
    const seen = new Set();
    const progress = await waitFor(dashboard, (id) => {
      const row = document.querySelector(`#jobs tr[data-job-id="${id}"]`);
      return {
        percent: row?.querySelector('.percent')?.textContent,
        value: Number(row?.querySelector('progress')?.value),
        max: Number(row?.querySelector('progress')?.max),
        state: row?.dataset.state,
      };
    }, job, (value) => {
      seen.add(value.percent);
      return value.percent === '100%' && value.state === 'done';
    }, 'the job reaching 100% on the dashboard');
    check(progress.value === progress.max, `progress bar full: ${JSON.stringify(progress)}`);
    const between = [...seen].filter((p) => p !== '0%' && p !== '100%');
    log(`progress seen: ${[...seen].join(' ')}`);
    check(between.length >= 1, `the dashboard showed the job in progress, not only 0% and 100%: ${[...seen]}`);

    const plot = await waitFor(dashboard, (count) => {
      const data = window.gridDashboard.plot.data;
      return {
        points: data[0].length,
        busiest: Math.max(0, ...data[1]),
        attribute: Number(document.getElementById('plot').dataset.points),
        canvas: Boolean(document.querySelector('#plot canvas')),
      };
    }, pointsBefore, (p) => p.points >= pointsBefore + 3 && p.busiest > 0, 'the plot receiving data points');
    check(plot.attribute === plot.points && plot.canvas, `the plot is drawn: ${JSON.stringify(plot)}`);
    summary.plot = plot;

    const map = await waitFor(dashboard, () => document.getElementById('chunk-map').dataset.states || '',
      null, (states) => states.length > 0 && /^d+$/.test(states), 'the chunk map showing every chunk accepted');
    summary.chunks = map.length;

    const board = await waitFor(dashboard, () => [...document.querySelectorAll('#leaderboard tbody tr')].map((row) => ({
      name: row.querySelector('td.name').textContent,
      markup: row.querySelector('td.name').innerHTML,
      elements: row.querySelector('td.name').children.length,
      credit: row.querySelector('td.credit').textContent,
    })), null, (rows) => rows.some((row) => row.name === displayName), 'the display name on the leaderboard');
    const named = board.find((row) => row.name === displayName);
    check(named.elements === 0, `the display name became markup: ${named.markup}`);
    check(!named.markup.includes('<img'), `the display name is not escaped: ${named.markup}`);
    check(await dashboard.evaluate(() => document.querySelectorAll('#leaderboard img').length === 0 && !window.x),
      'the display name ran as HTML');
    summary.leaderboard = board;

    // The job's page: progress, events, the picture.
    const jobPage = await openPage(context, `${base}/job.html?id=${job}`, problems);
    const shown = await waitFor(jobPage, () => {
      const picture = document.getElementById('picture');
      return {
        state: document.getElementById('state').textContent,
        percent: document.getElementById('percent').textContent,
        events: document.querySelectorAll('#events li').length,
        accepted: [...document.querySelectorAll('#events li')].filter((li) => li.textContent.includes('accepted')).length,
        complete: picture.dataset.complete,
        width: picture.naturalWidth,
        height: picture.naturalHeight,
        live: document.getElementById('live').dataset.state,
      };
    }, null, (v) => v.complete === 'true' && v.width > 0 && v.live === 'ended', 'the job page showing the finished picture');
    check(shown.state === 'done' && shown.percent === '100%', `job page: ${JSON.stringify(shown)}`);
    check(shown.accepted === map.length, `one event per accepted chunk: ${JSON.stringify(shown)}`);
    summary.picture = { width: shown.width, height: shown.height };

    // The API page.
    const apiPage = await openPage(context, `${base}/api.html`, problems);
    const api = await waitFor(apiPage, () => ({
      operations: Number(document.body.dataset.operations || 0),
      text: document.getElementById('operations').textContent,
    }), null, (v) => v.operations > 0, 'the API page rendering the document');
    for (const route of ['/api/v1/jobs/{id}/image.png', '/api/v1/jobs/{id}/events', '/api/v1/volunteers/me', '/api/v1/dashboard/events']) {
      check(api.text.includes(route), `the API page lists ${route}`);
    }
    summary.operations = api.operations;

    // The contribute page, as the volunteer (its identity in localStorage).
    const volunteerContext = await browser.newContext();
    await volunteerContext.addInitScript((id) => {
      window.localStorage.setItem('grid.volunteer-id', id);
      window.__cspViolations = [];
      document.addEventListener('securitypolicyviolation', (event) => {
        window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI}`);
      });
    }, volunteerId);
    const contribute = await openPage(volunteerContext, `${base}/`, problems, [422]);
    const credit = await waitFor(contribute, () => ({
      results: Number(document.getElementById('credit-results')?.textContent),
      credit: document.getElementById('credit-seconds')?.textContent,
      rank: document.getElementById('credit-rank')?.textContent,
      name: document.getElementById('display-name')?.value,
      pseudonym: document.getElementById('credit-pseudonym')?.textContent,
    }), null, (v) => v.results > 0, 'the contribute page showing credit');
    check(credit.name === displayName, `the display name field: ${JSON.stringify(credit)}`);
    check(credit.rank.startsWith('#'), `a rank: ${JSON.stringify(credit)}`);
    await contribute.fill('#display-name', 'bad\u202Ename');
    await contribute.click('#name-form button[type="submit"]');
    const refused = await waitFor(contribute, () => document.getElementById('name-message').textContent,
      null, (text) => text.length > 0, 'the refusal of a bad display name');
    check(/invisible|control|formatting/.test(refused), `the API's message is shown: ${refused}`);
    summary.credit = credit;

    for (const [name, page] of [['dashboard', dashboard], ['job', jobPage], ['api', apiPage], ['contribute', contribute]]) {
      const violations = await page.evaluate(() => window.__cspViolations ?? []);
      check(violations.length === 0, `${name}: CSP violations: ${violations.join('; ')}`);
    }
    check(problems.length === 0, problems.join('; '));
    summary.ok = true;
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  const message = error instanceof Failure ? error.message : error?.stack || String(error);
  process.stderr.write(`dashboard.mjs FAILED: ${message}\n`);
  process.stdout.write(`${JSON.stringify({ ok: false, error: String(error?.message ?? error) })}\n`);
  process.exit(1);
});
