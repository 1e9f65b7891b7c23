// The message composer. Drafts are kept per chat (in localStorage, per user)
// so that switching chats or reloading loses nothing; a sent text goes to
// the outbox, which shows it at once and never drops it.

import { h } from './dom.js';
import { state, ui } from './state.js';
import { icon } from './ui.js';
import { chatOf, enqueue } from './outbox.js';

const DRAFTS_PREFIX = 'chat.drafts.';
let draftsKey = null;

function draftKey(open) {
  return open.kind === 'global' ? 'global' : `member:${open.id}`;
}

export function loadDrafts(userId) {
  draftsKey = `${DRAFTS_PREFIX}${userId}`;
  try {
    const stored = JSON.parse(localStorage.getItem(draftsKey) || '{}');
    for (const [key, text] of Object.entries(stored || {})) if (typeof text === 'string' && text) state.drafts.set(key, text);
  } catch (err) { /* none kept */ }
}

/** Store one chat's draft, leaving the others as other tabs of this user wrote them. */
function saveDraft(key, text) {
  if (text) state.drafts.set(key, text);
  else state.drafts.delete(key);
  if (!draftsKey) return;
  try {
    const stored = JSON.parse(localStorage.getItem(draftsKey) || '{}') || {};
    if (text) stored[key] = text;
    else delete stored[key];
    localStorage.setItem(draftsKey, JSON.stringify(stored));
  } catch (err) { /* storage refused: the draft lives in memory */ }
}
export function buildComposer() {
  const key = draftKey(state.open);
  const input = h('textarea', {
    class: 'composer-input', testid: 'composer-input', rows: 1, maxlength: 1000,
    placeholder: state.open.kind === 'global' ? 'Анонимное сообщение…' : 'Сообщение…', 'aria-label': 'Сообщение',
  });
  const send = h('button', { class: 'send-btn', type: 'submit', testid: 'composer-send', title: 'Отправить', 'aria-label': 'Отправить', disabled: true }, icon('send'));
  const counter = h('span', { class: 'composer-counter' });
  const autosize = () => {
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
    send.disabled = !input.value.trim();
    counter.textContent = input.value.length > 900 ? `${input.value.length}/1000` : '';
  };
  input.value = state.drafts.get(key) || '';
  input.addEventListener('input', () => {
    saveDraft(key, input.value);
    autosize();
  });
  requestAnimationFrame(autosize);
  const form = h('form', {
    class: 'composer', testid: 'composer',
    onsubmit: (e) => {
      e.preventDefault();
      const text = input.value;
      if (!text.trim() || !state.open || state.open.kind === 'viewer') return;
      input.value = '';
      saveDraft(key, '');
      autosize();
      enqueue(chatOf(state.open), text);
    },
  }, input, counter, send);
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  ui.composerInput = input;
  return form;
}
