// End-to-end scenarios of the contribute page in headless Chromium, driven by
// server/tests/integration/browser.rs (which starts the master, submits the jobs and checks the API after).
//
//   node frontend/tests/browser.mjs <scenario> <base-url> <admin-token> <job-id>[,<job-id>...]
//
// Scenarios:
//   two-tabs   two browser contexts (two volunteers) open /?autostart=1 and compute the jobs.
//   close-one  three contexts; one is closed once the first job has made some progress.
//   mixed      one context (a native grid-worker computes alongside, started by the Rust test).
//   reconnect  one context computes the job, then talks with the Rust test over stdin/stdout:
//              prints READY, waits for KILLED (the master was killed), checks the page shows
//              "reconnecting", prints RECONNECTING, waits for "RESTARTED <job-id>" and checks
//              the page reconnects by itself and computes that job.
//   modules    one context, task-module jobs (a native grid-worker computes alongside); jobs
//              may end `failed` (chunks whose agreed outcome is an error): the Rust test checks
//              every chunk.
//   hostile    one context alone, hostile task modules (endless loop, memory hog, trap) before
//              normal jobs: everything finishes, the page stays up.
//   bombs      one context with two threads alone, talking with the Rust test over stdin/stdout
//              (which measures the memory of Chromium's processes in between): computes the
//              warm-up jobs it is given and prints WARM, waits for "BOMBS <job-id>,..." (table
//              bombs), waits for those jobs to end `failed` and prints BOMBED, waits for
//              "AFTER <job-id>,..." (ordinary jobs) and checks they end `done`, then does the
//              module scenarios' checks below on the page.
//   revoke-pause  one context with one thread; jobs: an endless-loop module job (one chunk,
//              long timeout) and a kernel job. Once the loop runs in the sandbox, the job is
//              cancelled (the master revokes the running lease): the sandbox must be stopped
//              and the slot go on to the kernel job. Then a second loop job is submitted (same
//              module) and, once it runs, the page is paused: its sandbox must be stopped too
//              and its lease handed back. The summary names that job (`pausedJob`).
//
// In the module scenarios the script also checks that no compute thread's Web Worker had to
// be replaced (a module must never take one down) and that no chunk was handed back to the
// master (the page logs "gave lease ... back" when it cannot run one).
//
// Each context is a separate volunteer: its own localStorage, so its own identity. The script
// asserts on the DOM (state, counters, identity) and on the API (the jobs finish), checks
// that no Content-Security-Policy violation or page error happened, prints a JSON summary as
// the last line of stdout and exits 0; on failure it prints why and exits 1.

import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';

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
const CONNECT_TIMEOUT_MS = 60_000;
const JOB_TIMEOUT_MS = Number(process.env.GRID_BROWSER_JOB_TIMEOUT_MS || 240_000);

const SCENARIOS = {
  'two-tabs': { contexts: 2 },
  'close-one': { contexts: 3, closeAfterChunks: 4 },
  mixed: { contexts: 1 },
  reconnect: { contexts: 1, masterGoesAway: true },
  modules: { contexts: 1, jobsMayFail: true, modules: true },
  hostile: { contexts: 1, jobsMayFail: true, modules: true },
  'revoke-pause': { contexts: 1, modules: true, threads: 1 },
  bombs: { contexts: 1, modules: true, threads: 2, bombs: true },
};

function log(message) {
  process.stderr.write(`[browser.mjs ${new Date().toISOString().slice(11, 23)}] ${message}\n`);
}

class Failure extends Error {}

function check(condition, message) {
  if (!condition) throw new Failure(message);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function job(base, token, id) {
  const response = await fetch(`${base}/api/v1/jobs/${id}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  check(response.ok, `GET /api/v1/jobs/${id}: HTTP ${response.status}`);
  return response.json();
}

const finished = (state) => ['done', 'failed', 'cancelled'].includes(state);

async function api(base, token, method, path, body) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json().catch(() => null);
  check(response.ok, `${method} ${path}: HTTP ${response.status} ${JSON.stringify(answer)}`);
  return answer;
}

/** Poll until `predicate()` holds (bounded). */
async function waitFor(predicate, what, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    check(Date.now() < deadline, `${what} did not happen within ${timeoutMs / 1000} s`);
    await sleep(50);
  }
}

/** Poll until `predicate(jobs)` holds; returns the jobs. */
async function waitJobs(base, token, ids, predicate, what, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let jobs = [];
  let lastLog = 0;
  for (;;) {
    jobs = await Promise.all(ids.map((id) => job(base, token, id)));
    if (predicate(jobs)) return jobs;
    if (Date.now() - lastLog > 5000) {
      lastLog = Date.now();
      log(`waiting for ${what}: ${jobs.map((j) => `job ${j.id} ${j.state} ${j.chunks.done}/${j.chunks.total}`).join(', ')}`);
    }
    check(Date.now() < deadline, `${what} did not happen within ${timeoutMs / 1000} s: ${JSON.stringify(jobs)}`);
    await sleep(200);
  }
}

/** One volunteer: a browser context with the contribute page open. */
async function openVolunteer(browser, base, index, { threads } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  if (threads) {
    await page.addInitScript((n) => localStorage.setItem('grid.threads', String(n)), threads);
  }
  const problems = [];
  /** Leases the page handed back because it could not run them (its console warnings). */
  const gaveBack = [];
  /** Web Workers started: compute threads (worker.js) and task-module sandboxes (sandbox.js). */
  const workers = { threads: 0, sandboxes: 0, sandboxesClosed: 0 };
  const onConsole = (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
    if (message.text().includes('gave lease')) gaveBack.push(message.text());
  };
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', onConsole);
  page.on('worker', (worker) => {
    if (/\/sandbox\.[0-9a-f]{16}\.js$/.test(worker.url())) {
      workers.sandboxes += 1;
      worker.on('close', () => (workers.sandboxesClosed += 1));
    } else if (/\/worker\.[0-9a-f]{16}\.js$/.test(worker.url())) workers.threads += 1;
  });
  page.on('response', (response) => {
    if (response.status() >= 400) problems.push(`HTTP ${response.status()} for ${response.url()}`);
  });
  await page.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (event) => {
      window.__cspViolations.push(`${event.violatedDirective} blocked ${event.blockedURI}`);
    });
  });
  const response = await page.goto(`${base}/?autostart=1`);
  check(response && response.status() === 200, `volunteer ${index}: / answered ${response?.status()}`);
  const csp = response.headers()['content-security-policy'] || '';
  check(csp.includes("script-src 'self' 'wasm-unsafe-eval'"), `volunteer ${index}: no CSP on the page: ${csp}`);
  return { index, context, page, problems, gaveBack, workers, closed: false };
}

async function dom(volunteer) {
  return volunteer.page.evaluate(() => ({
    state: document.getElementById('state').textContent,
    chunksDone: Number(document.getElementById('chunks-done').textContent),
    connections: document.getElementById('connections').textContent,
    threads: Number(document.getElementById('threads').value),
    cores: navigator.hardwareConcurrency,
    id: document.getElementById('volunteer-id').textContent,
    storedId: localStorage.getItem('grid.volunteer-id'),
    visibility: document.getElementById('visibility').dataset.visibility,
    lastError: document.getElementById('last-error').textContent,
    csp: window.__cspViolations ?? [],
  }));
}

async function waitConnected(volunteer) {
  const deadline = Date.now() + CONNECT_TIMEOUT_MS;
  for (;;) {
    const seen = await dom(volunteer);
    if (['connected', 'computing'].includes(seen.state)) return seen;
    check(Date.now() < deadline, `volunteer ${volunteer.index} did not connect: ${JSON.stringify(seen)}`);
    await sleep(100);
  }
}

/** Wait until the page's counter shows at least `chunks`, allowing for its 200 ms status rate. */
async function waitChunks(volunteer, chunks) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const seen = await dom(volunteer);
    if (seen.chunksDone >= chunks) return seen;
    check(Date.now() < deadline, `volunteer ${volunteer.index} shows ${seen.chunksDone} chunks, expected >= ${chunks}`);
    await sleep(100);
  }
}

/** Lines from the Rust test, one at a time. */
let input = null;
async function expectLine(prefix) {
  input ??= createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const { value, done } = await input.next();
  check(!done && value.startsWith(prefix), `expected ${prefix} from the test, got ${done ? 'EOF' : value}`);
  return value.slice(prefix.length).trim();
}

async function waitState(volunteer, states, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const seen = await dom(volunteer);
    if (states.includes(seen.state)) return seen;
    check(Date.now() < deadline, `volunteer ${volunteer.index} not ${states.join('/')}: ${JSON.stringify(seen)}`);
    await sleep(100);
  }
}

function checkClean(volunteer, seen, { masterWentAway = false } = {}) {
  check(seen.csp.length === 0, `volunteer ${volunteer.index}: CSP violations: ${seen.csp.join('; ')}`);
  // Chromium logs every refused connection attempt while the master is away.
  const expected = /WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/;
  const problems = volunteer.problems.filter((p) => !(masterWentAway && expected.test(p)));
  check(problems.length === 0, `volunteer ${volunteer.index}: ${problems.join('; ')}`);
}

async function main() {
  const [scenarioName, base, token, idList] = process.argv.slice(2);
  const scenario = SCENARIOS[scenarioName];
  if (!scenario || !base || !token || !idList) {
    process.stderr.write(`usage: browser.mjs <${Object.keys(SCENARIOS).join('|')}> <base-url> <admin-token> <job-id>[,<job-id>...]\n`);
    process.exit(2);
  }
  const ids = idList.split(',').map((id) => id.trim()).filter(Boolean);

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  const summary = { scenario: scenarioName, volunteers: [] };
  try {
    const volunteers = [];
    for (let i = 0; i < scenario.contexts; i++) {
      volunteers.push(await openVolunteer(browser, base, i, { threads: scenario.threads }));
    }
    for (const volunteer of volunteers) {
      const seen = await waitConnected(volunteer);
      log(`volunteer ${volunteer.index} ${seen.id}: ${seen.state}, ${seen.connections} connections`);
      check(/^browser-[0-9a-f]{16}$/.test(seen.id), `volunteer ${volunteer.index}: identity ${seen.id}`);
      check(seen.storedId === seen.id, `volunteer ${volunteer.index}: identity not kept in localStorage`);
      const threads = scenario.threads ?? Math.min(64, seen.cores);
      check(seen.threads === threads, `threads ${seen.threads}, expected ${threads} (cores ${seen.cores})`);
    }
    const identities = new Set(await Promise.all(volunteers.map(async (v) => (await dom(v)).id)));
    check(identities.size === volunteers.length, 'each browser context must be its own volunteer');

    if (scenario.closeAfterChunks) {
      await waitJobs(base, token, ids, (jobs) => jobs[0].chunks.done >= scenario.closeAfterChunks,
        `${scenario.closeAfterChunks} chunks done`, JOB_TIMEOUT_MS);
      const victim = volunteers[0];
      const before = await dom(victim);
      log(`closing volunteer 0 (${before.id}) mid-job after ${before.chunksDone} chunks`);
      check(before.chunksDone > 0 || before.state === 'connected', 'the closed volunteer was contributing');
      await victim.context.close();
      victim.closed = true;
      summary.closed = before.id;
      const now = await job(base, token, ids[0]);
      check(!finished(now.state), `job ${ids[0]} had already finished when the tab closed: ${JSON.stringify(now)}`);
    }

    if (scenarioName === 'revoke-pause') {
      const volunteer = volunteers[0];
      const { workers } = volunteer;
      const [loopJob, kernelJob] = ids;
      await waitFor(() => workers.sandboxes >= 1, 'the looping chunk reaching a sandbox');
      log('the looping chunk runs in a sandbox; cancelling its job');
      const looping = await api(base, token, 'DELETE', `/api/v1/jobs/${loopJob}`);
      check(looping.state === 'cancelled', `job ${loopJob} is ${looping.state} after DELETE`);
      await waitFor(() => workers.sandboxesClosed >= 1, 'the revoked chunk\'s sandbox being stopped', 10_000);
      await waitJobs(base, token, [kernelJob], (all) => all[0].state === 'done', 'the kernel job', JOB_TIMEOUT_MS);
      const again = await api(base, token, 'POST', '/api/v1/jobs', {
        module: looping.module, inputs: [1], timeout_ms: looping.timeout_ms, redundancy: 1,
      });
      summary.pausedJob = again.id;
      await waitFor(() => workers.sandboxes >= 2, 'the second looping chunk reaching a sandbox');
      log(`job ${again.id} runs in a sandbox; pausing the page`);
      await volunteer.page.click('#toggle');
      await waitState(volunteer, ['paused'], 10_000);
      await waitFor(() => workers.sandboxesClosed >= 2, 'the paused chunk\'s sandbox being stopped', 10_000);
      const seen = await dom(volunteer);
      checkClean(volunteer, seen);
      check(workers.threads === 1, `${workers.threads} thread Web Workers started for one thread`);
      check(volunteer.gaveBack.length === 0, `chunks handed back: ${volunteer.gaveBack.join('; ')}`);
      summary.volunteers.push({ id: seen.id, chunksDone: seen.chunksDone, ...workers });
      summary.ok = true;
      process.stdout.write(`${JSON.stringify(summary)}\n`);
      return;
    }

    if (scenario.bombs) {
      const volunteer = volunteers[0];
      const allEnd = (ids, states, what) => waitJobs(base, token, ids, (all) => all.every((j) => finished(j.state)),
        what, JOB_TIMEOUT_MS).then((all) => {
        for (const j of all) check(states.includes(j.state), `${what}: job ${j.id} ended ${j.state}: ${JSON.stringify(j)}`);
        return all;
      });
      await allEnd(ids, ['done'], 'the warm-up jobs');
      const warm = await waitChunks(volunteer, 1);
      process.stdout.write('WARM\n');
      const bombs = (await expectLine('BOMBS')).split(',');
      await allEnd(bombs, ['failed'], 'the table bomb jobs');
      process.stdout.write('BOMBED\n');
      const after = (await expectLine('AFTER')).split(',');
      await allEnd(after, ['done'], 'the jobs after the bombs');
      const seen = await waitChunks(volunteer, warm.chunksDone + 1);
      const { workers, gaveBack } = volunteer;
      log(`volunteer 0 ${seen.id}: ${seen.chunksDone} chunks, state ${seen.state}, `
        + `${workers.threads} thread workers, ${workers.sandboxes} sandboxes started`);
      check(['connected', 'computing'].includes(seen.state), `volunteer 0 state ${seen.state}`);
      checkClean(volunteer, seen);
      check(seen.connections === `${seen.threads} / ${seen.threads}`,
        `connections ${seen.connections} with ${seen.threads} threads`);
      check(workers.threads === seen.threads,
        `${workers.threads} thread Web Workers started for ${seen.threads} threads (one was replaced)`);
      check(workers.sandboxesClosed === 0, `${workers.sandboxesClosed} sandboxes stopped (one died or was replaced)`);
      check(gaveBack.length === 0, `chunks handed back: ${gaveBack.join('; ')}`);
      summary.volunteers.push({ id: seen.id, chunksBefore: warm.chunksDone, chunksDone: seen.chunksDone, ...workers });
      summary.ok = true;
      process.stdout.write(`${JSON.stringify(summary)}\n`);
      return;
    }

    if (scenario.masterGoesAway) {
      const volunteer = volunteers[0];
      await waitJobs(base, token, ids, (all) => all.every((j) => finished(j.state)), 'the first job', JOB_TIMEOUT_MS);
      const before = await waitChunks(volunteer, 1);
      process.stdout.write('READY\n');
      await expectLine('KILLED');
      const away = await waitState(volunteer, ['reconnecting'], 30_000);
      check(away.lastError !== '', 'the page does not say why it is reconnecting');
      log(`master gone: page says ${away.state} (${away.lastError})`);
      process.stdout.write('RECONNECTING\n');
      ids.splice(0, ids.length, await expectLine('RESTARTED'));
      const back = await waitState(volunteer, ['connected', 'computing'], 60_000);
      log(`master back: page says ${back.state}, ${back.connections} connections`);
      await waitJobs(base, token, ids, (all) => all.every((j) => finished(j.state)), 'the second job', JOB_TIMEOUT_MS);
      const after = await waitChunks(volunteer, before.chunksDone + 1);
      checkClean(volunteer, after, { masterWentAway: true });
      summary.volunteers.push({ id: after.id, chunksBefore: before.chunksDone, chunksAfter: after.chunksDone });
      summary.ok = true;
      process.stdout.write(`${JSON.stringify(summary)}\n`);
      return;
    }

    const jobs = await waitJobs(base, token, ids, (all) => all.every((j) => finished(j.state)),
      'every job finishing', JOB_TIMEOUT_MS);
    summary.jobs = jobs;
    const accepted = scenario.jobsMayFail ? ['done', 'failed'] : ['done'];
    for (const j of jobs) check(accepted.includes(j.state), `job ${j.id} ended ${j.state}: ${JSON.stringify(j)}`);

    for (const volunteer of volunteers.filter((v) => !v.closed)) {
      const seen = await waitChunks(volunteer, 1);
      log(`volunteer ${volunteer.index} ${seen.id}: ${seen.chunksDone} chunks, state ${seen.state}`);
      check(['connected', 'computing'].includes(seen.state), `volunteer ${volunteer.index} state ${seen.state}`);
      checkClean(volunteer, seen);
      const entry = { id: seen.id, chunksDone: seen.chunksDone, state: seen.state };
      if (scenario.modules) {
        const { workers, gaveBack } = volunteer;
        log(`volunteer ${volunteer.index}: ${workers.threads} thread workers, ${workers.sandboxes} sandboxes started`);
        check(seen.connections === `${seen.threads} / ${seen.threads}`,
          `volunteer ${volunteer.index}: connections ${seen.connections} with ${seen.threads} threads`);
        check(workers.threads === seen.threads,
          `volunteer ${volunteer.index}: ${workers.threads} thread Web Workers started for ${seen.threads} threads (one was replaced)`);
        check(gaveBack.length === 0, `volunteer ${volunteer.index} handed chunks back: ${gaveBack.join('; ')}`);
        Object.assign(entry, workers);
      }
      summary.volunteers.push(entry);
    }

    if (scenarioName === 'two-tabs') {
      const volunteer = volunteers[0];
      const { page } = volunteer;
      // Hidden tab: the page says what happens (the event is what browsers fire).
      await page.evaluate(() => {
        Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
        document.dispatchEvent(new Event('visibilitychange'));
      });
      check((await dom(volunteer)).visibility === 'hidden', 'the page does not react to being hidden');
      await page.evaluate(() => {
        Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' });
        document.dispatchEvent(new Event('visibilitychange'));
      });
      // Fewer threads: the extra Web Worker gives its work back and goes.
      await page.fill('#threads', '1');
      await page.dispatchEvent('#threads', 'change');
      await page.waitForFunction(() => document.getElementById('connections').textContent === '1 / 1');
      // Pause gives everything back and shows it.
      await page.click('#toggle');
      await page.waitForFunction(() => document.getElementById('state').textContent === 'paused');
      check((await dom(volunteer)).connections === '0 / 0', 'paused but still connected');
      // A reload keeps the identity.
      const id = (await dom(volunteer)).id;
      await page.reload();
      const reloaded = await dom(volunteer);
      check(reloaded.id === id, 'the identity changed on reload');
      check(reloaded.threads === 1, 'the thread setting was not remembered');
    }
    summary.ok = true;
    process.stdout.write(`${JSON.stringify(summary)}\n`);
  } finally {
    await browser.close();
  }
}

main().then(() => process.exit(0), (error) => {
  const message = error instanceof Failure ? error.message : error?.stack || String(error);
  process.stderr.write(`browser.mjs FAILED: ${message}\n`);
  process.stdout.write(`${JSON.stringify({ ok: false, error: String(error?.message ?? error) })}\n`);
  process.exit(1);
});
