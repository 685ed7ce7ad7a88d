// The dashboard (/dashboard): follows GET /api/v1/dashboard/events and draws what it says.
//
//   history, sample  -> the figures and the plot of results per second (uPlot)
//   jobs             -> the jobs table with progress bars (needs an API token)
//   leaderboard      -> the top volunteers by credit
//
// The chunk map of the selected job is read from GET /api/v1/jobs/{id}/chunks every two
// seconds while the job runs. For tests and the curious, `window.gridDashboard` is this page's
// state (the plot's data is `gridDashboard.plot.data`).

import uPlot from './uPlot.esm.js';
import {
  $, apiFetch, chunkLegend, drawChunkMap, el, errorText, FINISHED_JOB_STATES as FINISHED,
  follow, formatNumber, percent, tokenForm,
} from './sse.js';

/** Samples kept on the plot: ten minutes at one a second. */
const WINDOW = 600;
const MAP_REFRESH_MS = 2000;

// A module job's program is its id, `sha256:` and 64 hex digits: show the start of it.
function programLabel(program) {
  return program.startsWith('sha256:') ? `module ${program.slice(7, 19)}…` : program;
}

function formatCredit(seconds) {
  if (seconds < 60) return `${formatNumber(seconds, 1)} s`;
  if (seconds < 3600) return `${formatNumber(seconds / 60, 1)} min`;
  return `${formatNumber(seconds / 3600, 1)} h`;
}

class Dashboard {
  constructor() {
    this.times = [];
    this.results = [];
    this.chunks = [];
    this.jobs = [];
    this.selected = null;
    this.mapFor = null;
    this.plot = this.makePlot();
    chunkLegend($('map-legend'));
    this.token = tokenForm({
      form: $('token-form'),
      input: $('token'),
      forget: $('forget'),
      onChange: (token) => {
        this.token = token;
        this.connect();
      },
    });
    this.connect();
    setInterval(() => this.refreshMap(), MAP_REFRESH_MS);
    window.addEventListener('resize', () => this.plot.setSize(this.plotSize()));
  }

  plotSize() {
    const width = Math.max(280, $('plot').clientWidth || 600);
    return { width, height: 260 };
  }

  makePlot() {
    const ink = getComputedStyle(document.body).color || '#222';
    const grid = { stroke: 'rgba(128, 128, 128, 0.2)' };
    const axis = { stroke: ink, grid, ticks: grid };
    const clock = (u, ticks) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false }));
    const options = {
      ...this.plotSize(),
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      series: [
        { value: (u, t) => (t == null ? '–' : new Date(t * 1000).toLocaleTimeString([], { hour12: false })) },
        { label: 'results/s (this master)', stroke: '#2f6fde', width: 2, fill: 'rgba(47, 111, 222, 0.08)', points: { show: false } },
        { label: 'chunks decided/s (grid)', stroke: '#1e8e3e', width: 2, points: { show: false } },
      ],
      axes: [{ ...axis, values: clock, space: 90 }, { ...axis, size: 60 }],
      legend: { live: true },
    };
    return new uPlot(options, [this.times, this.results, this.chunks], $('plot'));
  }

  connect() {
    this.feed?.close();
    const withToken = Boolean(this.token);
    $('jobs-section').dataset.authorised = String(withToken);
    $('jobs-hint').hidden = withToken;
    if (!withToken) this.renderJobs([]);
    this.feed = follow('/api/v1/dashboard/events', {
      token: this.token,
      onEvent: (name, data) => this.onEvent(name, data),
      onState: (state, detail) => {
        const live = $('live');
        live.dataset.state = state;
        live.textContent = {
          open: 'live',
          retrying: 'reconnecting…',
          refused: 'refused',
          ended: 'ended',
        }[state] ?? state;
        if (state === 'refused' && this.token) {
          // A bad token: say so, and show what needs none.
          $('token-error').textContent = `The token was refused: ${detail}`;
          $('token-error').hidden = false;
          this.token = '';
          this.connect();
        } else if (state === 'open' && withToken) {
          $('token-error').hidden = true;
        }
      },
    });
  }

  onEvent(name, data) {
    if (name === 'history') {
      this.times.length = 0;
      this.results.length = 0;
      this.chunks.length = 0;
      for (const sample of data.samples ?? []) this.push(sample);
      this.redraw(data.samples?.at(-1));
    } else if (name === 'sample') {
      this.push(data);
      this.redraw(data);
    } else if (name === 'jobs') {
      this.renderJobs(data.jobs ?? []);
    } else if (name === 'leaderboard') {
      this.renderLeaderboard(data);
    }
  }

  push(sample) {
    this.times.push(sample.time_ms / 1000);
    this.results.push(sample.results_per_second);
    this.chunks.push(sample.chunks_per_second);
    while (this.times.length > WINDOW) {
      this.times.shift();
      this.results.shift();
      this.chunks.shift();
    }
  }

  redraw(sample) {
    this.plot.setData([this.times, this.results, this.chunks]);
    const plot = $('plot');
    plot.dataset.points = String(this.times.length);
    if (!sample) return;
    plot.dataset.lastResults = String(sample.results_per_second);
    $('results-rate').textContent = formatNumber(sample.results_per_second, 1);
    $('chunks-rate').textContent = formatNumber(sample.chunks_per_second, 1);
    $('workers-browser').textContent = formatNumber(sample.workers.browser);
    $('workers-native').textContent = formatNumber(sample.workers.native);
    $('chunks-open').textContent = formatNumber(sample.chunks.open);
    $('chunks-done').textContent = formatNumber(sample.chunks.done);
    $('chunks-failed').textContent = formatNumber(sample.chunks.failed);
  }

  renderJobs(jobs) {
    this.jobs = jobs;
    const body = $('jobs').tBodies[0];
    body.replaceChildren();
    $('jobs').hidden = jobs.length === 0;
    $('no-jobs').hidden = jobs.length > 0 || !this.token;
    if (this.selected === null || !jobs.some((job) => job.id === this.selected)) {
      const running = jobs.find((job) => !FINISHED.includes(job.state));
      this.selected = (running ?? jobs[0])?.id ?? null;
    }
    for (const job of jobs) {
      const decided = job.chunks.done + job.chunks.failed;
      const share = percent(decided, job.chunks.total);
      const row = el('tr', null, { 'data-job-id': job.id, 'data-state': job.state });
      if (job.id === this.selected) row.classList.add('selected');
      const link = el('a', `#${job.id}`, { href: `./job.html?id=${job.id}` });
      const id = el('td');
      id.append(link);
      const progress = el('td', null, { class: 'progress' });
      const bar = el('progress', null, { max: Math.max(1, job.chunks.total), value: decided });
      progress.append(
        bar,
        el('span', `${share}%`, { class: 'percent' }),
        el('span', `${formatNumber(decided)} / ${formatNumber(job.chunks.total)}`, { class: 'small' }),
      );
      row.append(
        id,
        el('td', job.name ?? '', { class: 'name' }),
        el('td', programLabel(job.kernel), { title: job.kernel }),
        el('td', job.state, { class: 'state' }),
        progress,
      );
      row.addEventListener('click', (event) => {
        if (event.target.closest('a')) return;
        this.selected = job.id;
        this.mapFor = null;
        this.renderJobs(this.jobs);
        this.refreshMap();
      });
      body.append(row);
    }
    this.refreshMap();
  }

  async refreshMap() {
    const job = this.jobs.find((j) => j.id === this.selected);
    $('map-section').hidden = !job;
    if (!job || !this.token || this.mapLoading) return;
    // A finished job's map does not change any more.
    const key = `${job.id}:${job.state}`;
    if (this.mapFor === key && FINISHED.includes(job.state)) return;
    this.mapLoading = true;
    try {
      const response = await apiFetch(`/api/v1/jobs/${job.id}/chunks`, this.token);
      if (!response.ok) throw new Error(await errorText(response));
      const map = await response.json();
      $('map-job').textContent = `#${job.id}`;
      $('map-job').href = `./job.html?id=${job.id}`;
      const canvas = $('chunk-map');
      canvas.dataset.states = map.states.length <= 10_000 ? map.states : '';
      canvas.dataset.total = String(map.total);
      drawChunkMap(canvas, map.states);
      this.mapFor = key;
    } catch (error) {
      $('map-job').textContent = `#${job.id} (${error.message})`;
    } finally {
      this.mapLoading = false;
    }
  }

  renderLeaderboard(board) {
    const body = $('leaderboard').tBodies[0];
    body.replaceChildren();
    $('no-volunteers').hidden = board.volunteers.length > 0;
    $('leaderboard').hidden = board.volunteers.length === 0;
    for (const entry of board.volunteers) {
      const name = el('td', entry.name, { class: 'name', title: entry.pseudonym });
      if (!entry.display_name) name.classList.add('pseudonym');
      const row = el('tr', null, { 'data-rank': entry.rank });
      row.append(
        el('td', entry.rank),
        name,
        el('td', formatCredit(entry.credit_seconds), { class: 'credit' }),
        el('td', formatNumber(entry.results)),
      );
      body.append(row);
    }
    $('volunteer-total').textContent = formatNumber(board.total);
  }
}

window.gridDashboard = new Dashboard();
