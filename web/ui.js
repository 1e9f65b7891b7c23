// Generic interface pieces: toasts, modal dialogs, screens, icons, badges.
// They know nothing about conversations.

import { ApiError } from './api.js';
import { messageFor } from './errors.js';
import { countText, h } from './dom.js';
import { MEMBERS, VIEWERS } from './state.js';

const root = document.getElementById('root');

let shown = null; // {el, message, kind, timer}

/**
 * One toast at a time: the same message again keeps the one shown for
 * longer (a burst of refused sends is one toast), a new one replaces it.
 */
export function toast(message, kind = 'error') {
  const box = document.getElementById('toasts');
  const life = kind === 'error' ? 5000 : 3000;
  if (shown && shown.el.isConnected && !shown.el.classList.contains('leaving') && shown.message === message && shown.kind === kind) {
    clearTimeout(shown.timer);
    shown.timer = setTimeout(() => dismiss(shown.el), life);
    return;
  }
  if (shown) {
    clearTimeout(shown.timer);
    shown.el.remove();
  }
  const el = h('div', { class: `toast toast-${kind}`, testid: 'toast', dataset: { kind }, role: 'status' }, message);
  box.append(el);
  shown = { el, message, kind, timer: setTimeout(() => dismiss(el), life) };
}

function dismiss(el) {
  el.classList.add('leaving');
  setTimeout(() => {
    el.remove();
    if (shown && shown.el === el) shown = null;
  }, 300);
}

export function reportError(err) {
  if (err instanceof ApiError) toast(messageFor(err), 'error');
  else {
    console.error(err);
    toast(String((err && err.message) || err), 'error');
  }
}

/**
 * A modal dialog; resolves with onOk's value, or null when cancelled.
 * `safe`: a destructive question starts on Cancel, so a stray Enter keeps things.
 */
export function modal({ testid, title, body, okLabel, okClass = 'btn-primary', onOk, safe = false }) {
  return new Promise((resolve) => {
    const returnFocus = document.activeElement;
    const close = (value) => {
      overlay.remove();
      document.removeEventListener('keydown', onKey, true);
      if (returnFocus && returnFocus.isConnected) returnFocus.focus();
      resolve(value);
    };
    const onKey = (e) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        close(null);
      } else if (e.key === 'Tab') {
        // Keep the focus inside the dialog while it is open.
        const items = [...form.querySelectorAll('input, textarea, button:not(:disabled)')];
        const first = items[0];
        const last = items[items.length - 1];
        if (e.shiftKey ? document.activeElement === first || !form.contains(document.activeElement) : document.activeElement === last) {
          e.preventDefault();
          (e.shiftKey ? last : first).focus();
        }
      }
    };
    const error = h('div', { class: 'form-error', testid: 'dialog-error' });
    const submit = async (e) => {
      e.preventDefault();
      okBtn.disabled = true;
      try {
        const value = onOk ? await onOk(error) : true;
        if (value !== undefined && value !== false) close(value);
      } finally {
        okBtn.disabled = false;
      }
    };
    const okBtn = h('button', { type: 'submit', class: `btn ${okClass}`, testid: 'dialog-ok' }, okLabel);
    const cancelBtn = h('button', { type: 'button', class: 'btn btn-ghost', testid: 'dialog-cancel', onclick: () => close(null) }, 'Отмена');
    const titleId = `dialog-title-${Date.now()}`;
    const form = h('form', { class: 'dialog', testid, onsubmit: submit, role: 'dialog', 'aria-modal': 'true', 'aria-labelledby': titleId },
      h('h2', { class: 'dialog-title', id: titleId }, title),
      body,
      error,
      h('div', { class: 'dialog-actions' }, cancelBtn, okBtn));
    const overlay = h('div', { class: 'overlay', onmousedown: (e) => { if (e.target === overlay) close(null); } }, form);
    document.addEventListener('keydown', onKey, true);
    document.body.append(overlay);
    const focusable = form.querySelector('input') || (safe ? cancelBtn : okBtn);
    focusable.focus();
  });
}

export function confirmDialog(title, text, okLabel) {
  return modal({ testid: 'confirm-dialog', title, body: h('p', { class: 'dialog-text' }, text), okLabel, okClass: 'btn-danger', safe: true });
}

export function showScreen(el) {
  root.replaceChildren(el);
}

export function messageScreen(testid, title, text, extra) {
  showScreen(h('div', { class: 'screen center', testid },
    h('div', { class: 'card card-narrow' },
      h('div', { class: 'logo' }, logoSvg()),
      h('h1', { class: 'card-title' }, title),
      h('p', { class: 'card-text' }, text),
      extra)));
}

export function logoSvg() {
  const span = h('span', { class: 'logo-mark' });
  span.innerHTML = '<svg viewBox="0 0 32 32" width="40" height="40" aria-hidden="true"><rect width="32" height="32" rx="9" fill="currentColor"/><path d="M9 11h14v8H15l-4 3v-3H9z" fill="#fff"/></svg>';
  return span;
}

const ICONS = {
  plus: '<path d="M12 5v14M5 12h14"/>',
  logout: '<path d="M9 21H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h4M16 17l5-5-5-5M21 12H9"/>',
  send: '<path d="M4 12l16-8-6 16-3-7z"/>',
  back: '<path d="M15 18l-6-6 6-6"/>',
  info: '<circle cx="12" cy="12" r="9"/><path d="M12 11v5M12 8h.01"/>',
  eye: '<path d="M2 12s3.5-7 10-7 10 7 10 7-3.5 7-10 7S2 12 2 12z"/><circle cx="12" cy="12" r="3"/>',
  users: '<path d="M16 20v-2a4 4 0 0 0-4-4H6a4 4 0 0 0-4 4v2"/><circle cx="9" cy="7" r="4"/><path d="M22 20v-2a4 4 0 0 0-3-3.9M16 3.1a4 4 0 0 1 0 7.8"/>',
  trash: '<path d="M3 6h18M8 6V4h8v2M6 6l1 14h10l1-14"/>',
  leave: '<path d="M14 4h4a2 2 0 0 1 2 2v12a2 2 0 0 1-2 2h-4M3 12h11M7 8l-4 4 4 4"/>',
  close: '<path d="M6 6l12 12M18 6L6 18"/>',
  globe: '<circle cx="12" cy="12" r="9"/><path d="M3 12h18M12 3a14 14 0 0 1 0 18M12 3a14 14 0 0 0 0 18"/>',
  clock: '<circle cx="12" cy="12" r="9"/><path d="M12 7v5l3 2"/>',
  mask: '<path d="M3 8c3-2 15-2 18 0 0 6-3 10-9 10S3 14 3 8z"/><path d="M8 11h2M14 11h2"/>',
};

export function icon(name) {
  const span = h('span', { class: 'icon', 'aria-hidden': 'true' });
  span.innerHTML = `<svg viewBox="0 0 24 24" width="20" height="20" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">${ICONS[name]}</svg>`;
  return span;
}

export function badge(count, testid) {
  return h('span', { class: `badge${count > 0 ? '' : ' zero'}`, testid, dataset: { count } }, count > 99 ? '99+' : String(count));
}

export function countPill(kind, count, testid) {
  const forms = kind === 'eye' ? VIEWERS : MEMBERS;
  return h('span', {
    class: `pill${count > 0 ? '' : ' zero'}`, testid, dataset: { count }, title: countText(count, forms),
  }, icon(kind), String(count));
}
