// The contribute page's credit section: this volunteer's verified credit and rank, and the
// display name shown on the dashboard's leaderboard. Added to the page by this script (after
// the identity section) so the page's own markup stays as it is.
//
// The volunteer is its worker identity (what app.js shows in #volunteer-id and keeps in
// localStorage), sent in the X-Grid-Volunteer header; it is never shown to others.

const ID_KEY = 'grid.volunteer-id';
const REFRESH_MS = 15_000;
const MAX_NAME = 32;

const $ = (id) => document.getElementById(id);

function identity() {
  const shown = $('volunteer-id')?.textContent?.trim();
  if (shown && shown !== '…') return shown;
  try {
    return window.localStorage.getItem(ID_KEY) || '';
  } catch {
    return '';
  }
}

function node(tag, attributes = {}, text) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function build() {
  const section = node('section', { class: 'credit', 'aria-labelledby': 'credit-title' });
  section.append(node('h2', { id: 'credit-title' }, 'Your credit'));
  const figures = node('div', { class: 'figures' });
  for (const [id, label] of [['credit-seconds', 'Credit'], ['credit-results', 'Verified results'], ['credit-rank', 'Rank']]) {
    const figure = node('div', { class: 'figure' });
    figure.append(node('span', { class: 'label' }, label), node('span', { id, class: 'value' }, '–'));
    figures.append(figure);
  }
  section.append(figures);
  section.append(node('p', { class: 'small' },
    'Credit is verified compute time: a result earns its chunk\u2019s computing time once other volunteers agreed with it. '
    + 'On the leaderboard you appear as your display name, or else as '));
  section.lastChild.append(node('code', { id: 'credit-pseudonym' }, '…'), '.');
  const form = node('form', { id: 'name-form', class: 'credit-form' });
  const label = node('label', {}, 'Display name ');
  label.append(node('input', {
    id: 'display-name', type: 'text', maxlength: String(MAX_NAME), autocomplete: 'nickname',
    spellcheck: 'false', placeholder: 'anonymous',
  }));
  form.append(label, node('button', { type: 'submit' }, 'Save'),
    node('button', { type: 'button', id: 'clear-name', class: 'secondary' }, 'Remove'));
  section.append(form);
  section.append(node('p', { id: 'name-message', class: 'small', hidden: '' }));
  section.append(node('p', { class: 'small' }));
  section.lastChild.append(node('a', { href: './dashboard' }, 'See the dashboard and the leaderboard'));
  const anchor = document.querySelector('section.identity') ?? document.querySelector('main > footer');
  if (anchor?.classList.contains('identity')) anchor.after(section);
  else if (anchor) anchor.before(section);
  else document.querySelector('main')?.append(section);
}

function format(seconds) {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function show(view) {
  $('credit-seconds').textContent = format(view.credit_seconds);
  $('credit-results').textContent = String(view.results);
  $('credit-rank').textContent = view.rank ? `#${view.rank}` : '–';
  $('credit-pseudonym').textContent = view.pseudonym;
  const input = $('display-name');
  if (document.activeElement !== input) input.value = view.display_name ?? '';
  $('name-form').dataset.saved = view.display_name ?? '';
}

function message(text, isError) {
  const p = $('name-message');
  p.textContent = text;
  p.hidden = !text;
  p.classList.toggle('error', Boolean(isError));
}

async function call(method, body) {
  const id = identity();
  if (!id) return null;
  const response = await fetch('/api/v1/volunteers/me', {
    method,
    headers: { 'x-grid-volunteer': id, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    cache: 'no-store',
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data?.error?.message ?? `HTTP ${response.status}`);
  return data;
}

async function refresh() {
  try {
    const view = await call('GET');
    if (view) show(view);
  } catch {
    // The figures stay as they were; the next refresh tries again.
  }
}

async function save(name) {
  try {
    const view = await call('PUT', { display_name: name });
    if (view) show(view);
    message(name === null ? 'Display name removed.' : 'Saved.', false);
  } catch (error) {
    message(error.message, true);
  }
}

// The section's styles (the contribute page itself loads only style.css).
const styles = node('link', { rel: 'stylesheet', href: './pages.css' });
document.head.append(styles);
build();
$('name-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const name = $('display-name').value;
  save(name.trim() === '' ? null : name);
});
$('clear-name').addEventListener('click', () => save(null));
refresh();
setInterval(refresh, REFRESH_MS);
