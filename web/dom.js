// Small DOM and formatting helpers shared by the app's modules.

/**
 * Build an element: h('div', {class: 'x', dataset: {id: 1}, onclick}, child...).
 * Strings become text nodes (never HTML); null/false children are skipped.
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'testid') el.dataset.testid = value;
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Russian plural: plural(5, ['участник', 'участника', 'участников']). */
export function plural(n, forms) {
  const mod10 = n % 10;
  const mod100 = n % 100;
  if (mod10 === 1 && mod100 !== 11) return forms[0];
  if (mod10 >= 2 && mod10 <= 4 && (mod100 < 12 || mod100 > 14)) return forms[1];
  return forms[2];
}

export function countText(n, forms) {
  return `${n} ${plural(n, forms)}`;
}

/** "09:41": a message's time (its day is on the date separator above it). */
export function formatClock(unixSeconds) {
  if (!unixSeconds) return '';
  return new Date(unixSeconds * 1000).toLocaleTimeString('ru-RU', { hour: '2-digit', minute: '2-digit' });
}

const MONTHS_GENITIVE = [
  'января', 'февраля', 'марта', 'апреля', 'мая', 'июня',
  'июля', 'августа', 'сентября', 'октября', 'ноября', 'декабря',
];

function startOfDay(date) {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate());
}

/** The browser's local calendar day of a moment, as a comparable key. */
export function dayKey(unixSeconds) {
  const date = new Date(unixSeconds * 1000);
  return `${date.getFullYear()}-${date.getMonth() + 1}-${date.getDate()}`;
}

/**
 * A date separator's label, by the browser's local date: "Сегодня", "Вчера",
 * "12 ноября", and "12 ноября 2025" outside the current year.
 */
export function formatDay(unixSeconds, now = new Date()) {
  const date = new Date(unixSeconds * 1000);
  // Rounded: a day with a daylight-saving change is 23 or 25 hours long.
  const daysAgo = Math.round((startOfDay(now) - startOfDay(date)) / 86_400_000);
  // A server clock a little ahead of ours must not turn tonight into tomorrow.
  if (daysAgo <= 0) return 'Сегодня';
  if (daysAgo === 1) return 'Вчера';
  const label = `${date.getDate()} ${MONTHS_GENITIVE[date.getMonth()]}`;
  return date.getFullYear() === now.getFullYear() ? label : `${label} ${date.getFullYear()}`;
}

const PALETTE = ['#e64646', '#f2994a', '#e6b800', '#4bb34b', '#2bb3c0', '#2688eb', '#7a5cf0', '#d252d2'];

export function colorFor(seed) {
  const text = String(seed);
  let hash = 0;
  for (let i = 0; i < text.length; i += 1) hash = (hash * 31 + text.charCodeAt(i)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

/**
 * A user's own colour (their initials' background, their name over their
 * messages): seeded by the user id, so it is the same in every conversation,
 * after a rename and across reloads.
 */
export function userColor(userId) {
  return colorFor(userId);
}

function initials(name) {
  const words = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const letters = words.slice(0, 2).map((w) => Array.from(w)[0]).join('');
  return (letters || '?').toUpperCase();
}

function safeUrl(url) {
  return typeof url === 'string' && /^https?:\/\//i.test(url) ? url : '';
}

/** A round avatar: the picture when there is one, else coloured initials. */
export function avatar({ url, name, seed, size = 40, extraClass = '', testid = null }) {
  const el = h('span', {
    class: `avatar ${extraClass}`.trim(), testid,
    style: `--size:${size}px;--avatar-bg:${colorFor(seed ?? name)}`,
    'aria-hidden': 'true',
  }, initials(name));
  const src = safeUrl(url);
  if (src) {
    const img = h('img', { src, alt: '', loading: 'lazy', referrerpolicy: 'no-referrer' });
    img.addEventListener('error', () => img.remove());
    el.append(img);
  }
  return el;
}
