// Shared by the dashboard, job and API pages: server-sent events over fetch (EventSource
// cannot send an Authorization header), the API token kept in this browser, and small DOM
// helpers. Everything that comes from the server is written with textContent, never as HTML.

const TOKEN_KEY = 'grid.api-token';

/** The job states a job does not leave (the master's `JobState::FINISHED`; a test of the
 * master checks this line against it). */
export const FINISHED_JOB_STATES = ['done', 'failed', 'cancelled'];

export const $ = (id) => document.getElementById(id);

/** The API token saved in this browser, or ''. */
export function savedToken() {
  try {
    return window.localStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function saveToken(token) {
  try {
    if (token) window.localStorage.setItem(TOKEN_KEY, token);
    else window.localStorage.removeItem(TOKEN_KEY);
  } catch {
    // localStorage disabled: the token lasts until the page closes.
  }
}

/** A fetch with the API token (if any). */
export function apiFetch(path, token, init = {}) {
  const headers = new Headers(init.headers || {});
  if (token) headers.set('authorization', `Bearer ${token}`);
  return fetch(path, { ...init, headers });
}

/** The API's error message from a response, or its status. */
export async function errorText(response) {
  try {
    const body = await response.json();
    if (body?.error?.message) return body.error.message;
  } catch {
    // Not JSON.
  }
  return `HTTP ${response.status}`;
}

/** A new element with text (never HTML) and attributes. */
export function el(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

export function formatNumber(value, digits = 0) {
  return Number(value).toLocaleString('en', {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

export function percent(done, total) {
  return total > 0 ? Math.floor((100 * done) / total) : 0;
}

/**
 * Follow a server-sent events stream: `onEvent(name, data)` for each event (data parsed as
 * JSON), `onState(state, detail)` with `open`, `retrying`, `ended` or `refused`. Reconnects
 * with backoff when the connection drops or the master has no stream place free (429, 503:
 * after its Retry-After), unless `once` (the stream ends by itself, as a job's does) or the
 * server refused (any other 4xx). Returns `{ close() }`.
 */
export function follow(url, { token, onEvent, onState = () => {}, once = false }) {
  const controller = new AbortController();
  let closed = false;
  let delay = 1000;

  async function connect() {
    while (!closed) {
      let finished = false;
      try {
        const response = await apiFetch(url, token, {
          headers: { accept: 'text/event-stream' },
          signal: controller.signal,
          cache: 'no-store',
        });
        if (response.status === 429 || response.status === 503) {
          // The master's (503) or this network's (429) stream places are all taken: wait as
          // long as it asks (Retry-After), at least the backoff, and try again.
          const wait = Number(response.headers.get('retry-after')) * 1000;
          if (Number.isFinite(wait) && wait > delay) delay = Math.min(60_000, wait);
          throw new Error(await errorText(response));
        }
        if (response.status >= 400 && response.status < 500) {
          onState('refused', await errorText(response));
          return;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        onState('open');
        delay = 1000;
        await read(response.body, onEvent);
        finished = true;
      } catch (error) {
        if (closed) return;
        onState('retrying', String(error?.message ?? error));
      }
      if (finished && once) {
        onState('ended');
        return;
      }
      if (finished) onState('retrying', 'the stream ended');
      await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random() / 2)));
      delay = Math.min(30_000, delay * 2);
    }
  }

  connect();
  return {
    close() {
      closed = true;
      controller.abort();
    },
  };
}

async function read(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length === 0) continue; // keep-alive comment
      let parsed;
      try {
        parsed = JSON.parse(data.join('\n'));
      } catch {
        continue;
      }
      onEvent(name, parsed);
    }
  }
}

/** The token form of a page: fills it, saves on submit, forgets on demand. */
export function tokenForm({ form, input, forget, onChange }) {
  input.value = savedToken();
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    saveToken(input.value.trim());
    onChange(input.value.trim());
  });
  forget.addEventListener('click', () => {
    input.value = '';
    saveToken('');
    onChange('');
  });
  return input.value;
}

/** Chunk map letters and their colours (see GET /api/v1/jobs/{id}/chunks). */
export const CHUNK_STATES = {
  o: { label: 'waiting', colour: '#c8ccd4' },
  r: { label: 'computing', colour: '#2f6fde' },
  d: { label: 'accepted', colour: '#1e8e3e' },
  f: { label: 'failed', colour: '#c0392b' },
  c: { label: 'cancelled', colour: '#6b7280' },
};
/** When several chunks share a pixel, the most telling state wins. */
const PRECEDENCE = 'frocd';

/** Draw one letter per chunk on a canvas, as a grid of squares. */
export function drawChunkMap(canvas, states, maxHeight = 180) {
  const context = canvas.getContext('2d');
  const width = canvas.width;
  const n = states.length;
  canvas.height = maxHeight;
  context.clearRect(0, 0, width, canvas.height);
  if (n === 0) return;
  // Square cells as large as fit, at least one pixel; beyond that, several chunks per pixel.
  let cell = Math.max(1, Math.floor(Math.sqrt((width * canvas.height) / n)));
  while (cell > 1 && Math.ceil(n / Math.floor(width / cell)) * cell > canvas.height) cell -= 1;
  const columns = Math.max(1, Math.floor(width / cell));
  const cells = Math.min(n, columns * Math.floor(canvas.height / cell));
  const perCell = Math.ceil(n / cells);
  const gap = cell >= 6 ? 1 : 0;
  // Only as tall as the rows drawn.
  const height = Math.max(cell, Math.ceil(Math.ceil(n / perCell) / columns) * cell);
  if (canvas.height !== height) canvas.height = height;
  for (let c = 0; c * perCell < n; c++) {
    let letter = states[c * perCell];
    let rank = PRECEDENCE.indexOf(letter);
    for (let i = c * perCell + 1; i < Math.min(n, (c + 1) * perCell); i++) {
      const r = PRECEDENCE.indexOf(states[i]);
      if (r >= 0 && r < rank) {
        rank = r;
        letter = states[i];
      }
    }
    context.fillStyle = (CHUNK_STATES[letter] || CHUNK_STATES.o).colour;
    const x = (c % columns) * cell;
    const y = Math.floor(c / columns) * cell;
    context.fillRect(x, y, cell - gap, cell - gap);
  }
}

/** A legend for the chunk map. */
export function chunkLegend(container) {
  container.replaceChildren();
  for (const { label, colour } of Object.values(CHUNK_STATES)) {
    const item = el('span', label, { class: 'legend-item' });
    const swatch = el('span', null, { class: 'swatch', 'data-colour': colour });
    swatch.style.background = colour;
    item.prepend(swatch);
    container.append(item);
  }
}
