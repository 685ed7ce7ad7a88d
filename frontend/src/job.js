// A job's page (job.html?id=N): its progress live from GET /api/v1/jobs/{id}/events, its
// chunk map, and for `mandelbrot` jobs the picture from GET /api/v1/jobs/{id}/image.png,
// refreshed as tiles are accepted.
//
// The API needs the token in a header, so the picture is fetched with it and shown as a data:
// URL (the page's Content-Security-Policy allows images from this origin and data: only).

import {
  $, apiFetch, chunkLegend, drawChunkMap, el, errorText, FINISHED_JOB_STATES as FINISHED,
  follow, formatNumber, percent, tokenForm,
} from './sse.js';

const EVENTS_SHOWN = 200;
const PICTURE_EVERY_MS = 1500;
/** The chunk map is read again this often while the job runs (events say nothing of leases). */
const MAP_REFRESH_MS = 3000;

class JobPage {
  constructor() {
    this.id = Number.parseInt(new URLSearchParams(location.search).get('id') ?? '', 10);
    chunkLegend($('map-legend'));
    this.token = tokenForm({
      form: $('token-form'),
      input: $('token'),
      forget: $('forget'),
      onChange: (token) => {
        this.token = token;
        this.open();
      },
    });
    if (!Number.isSafeInteger(this.id) || this.id <= 0) {
      this.say('No job id: open this page as job.html?id=N (the dashboard links here).');
      return;
    }
    $('title').textContent = `Job #${this.id}`;
    document.title = `Job #${this.id} · grid`;
    this.open();
    setInterval(() => this.refreshMap(), MAP_REFRESH_MS);
  }

  async refreshMap() {
    if (!this.states || !this.token || FINISHED.includes(this.state)) return;
    const response = await apiFetch(`/api/v1/jobs/${this.id}/chunks`, this.token);
    if (!response.ok) return;
    this.states = Array.from((await response.json()).states);
    this.drawMap();
  }

  say(message) {
    $('message').textContent = message;
    $('message').hidden = !message;
  }

  async open() {
    this.stream?.close();
    this.say('');
    this.states = null;
    this.pictureShown = 0;
    $('events').replaceChildren();
    if (!this.token) {
      this.say('Enter the token that submitted this job (or the admin token).');
      return;
    }
    const response = await apiFetch(`/api/v1/jobs/${this.id}/chunks`, this.token);
    if (!response.ok) {
      this.say(await errorText(response));
      return;
    }
    this.states = Array.from((await response.json()).states);
    this.drawMap();
    this.stream = follow(`/api/v1/jobs/${this.id}/events`, {
      token: this.token,
      once: true,
      onEvent: (name, data) => this.onEvent(name, data),
      onState: (state, detail) => {
        $('live').dataset.state = state;
        $('live').textContent = { open: 'live', retrying: 'reconnecting…', ended: 'finished', refused: 'refused' }[state] ?? state;
        if (state === 'refused') this.say(detail);
      },
    });
  }

  onEvent(name, data) {
    if (name === 'job' || name === 'job_done') {
      this.show(data);
      if (name === 'job_done') this.log(`job ${data.state}`);
    } else if (name === 'progress') {
      this.showCounts(data.state, data.chunks);
    } else if (name === 'chunk_accepted') {
      this.states[data.index] = 'd';
      this.log(`chunk ${data.index} accepted (${data.agreeing} agreeing)`);
    } else if (name === 'chunk_failed') {
      this.states[data.index] = 'f';
      this.log(`chunk ${data.index} failed: ${data.error}`);
    }
    this.scheduleDraw(name === 'job_done');
  }

  show(job) {
    $('title').textContent = job.name ? `Job #${job.id}: ${job.name}` : `Job #${job.id}`;
    // A module job's program is its module id (`sha256:...`).
    $('kernel').textContent = job.kernel ?? job.module ?? '–';
    this.kernel = job.kernel;
    this.showCounts(job.state, job.chunks);
    if (job.kernel === 'mandelbrot') {
      $('picture-section').hidden = false;
      $('picture-id').textContent = String(job.id);
    }
  }

  showCounts(state, chunks) {
    this.state = state;
    $('state').textContent = state;
    $('state').dataset.state = state;
    $('done').textContent = formatNumber(chunks.done);
    $('failed').textContent = formatNumber(chunks.failed);
    $('total').textContent = formatNumber(chunks.total);
    const decided = chunks.done + chunks.failed;
    $('progress').max = Math.max(1, chunks.total);
    $('progress').value = decided;
    $('percent').textContent = `${percent(decided, chunks.total)}%`;
  }

  log(text) {
    const list = $('events');
    list.prepend(el('li', text));
    while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
  }

  /** Redraw at most once per animation frame; the picture at most every 1.5 s (and at the end). */
  scheduleDraw(final) {
    if (!this.drawPending) {
      this.drawPending = true;
      requestAnimationFrame(() => {
        this.drawPending = false;
        this.drawMap();
      });
    }
    if (this.kernel !== 'mandelbrot') return;
    const wait = final ? 0 : Math.max(0, this.pictureShown + PICTURE_EVERY_MS - Date.now());
    clearTimeout(this.pictureTimer);
    this.pictureTimer = setTimeout(() => this.loadPicture(final), wait);
  }

  drawMap() {
    if (this.states) drawChunkMap($('chunk-map'), this.states.join(''));
  }

  async loadPicture(final) {
    this.pictureShown = Date.now();
    const response = await apiFetch(`/api/v1/jobs/${this.id}/image.png`, this.token, { cache: 'no-store' });
    if (!response.ok) return;
    const complete = response.headers.get('x-grid-image-complete') === 'true';
    const blob = await response.blob();
    const url = await new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
    const picture = $('picture');
    picture.src = url;
    picture.dataset.complete = String(complete);
  }
}

window.gridJob = new JobPage();
