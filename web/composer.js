// The message composer and sending: drafts per chat survive switching chats.

import { h } from './dom.js';
import { SENT_IDS_KEY, state, ui } from './state.js';
import { reportError, icon } from './ui.js';
import { renderSidebar } from './sidebar.js';
import { upsertMessageNode } from './messages.js';

function draftKey(open) {
  return open.kind === 'global' ? 'global' : `member:${open.id}`;
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
    if (input.value) state.drafts.set(key, input.value);
    else state.drafts.delete(key);
    autosize();
  });
  requestAnimationFrame(autosize);
  const form = h('form', {
    class: 'composer', testid: 'composer',
    onsubmit: async (e) => {
      e.preventDefault();
      const text = input.value;
      if (!text.trim()) return;
      input.value = '';
      state.drafts.delete(key);
      autosize();
      try {
        await sendMessage(text);
      } catch (err) {
        if (!input.value) {
          input.value = text;
          state.drafts.set(key, text);
          autosize();
        }
        reportError(err);
      }
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

async function sendMessage(text) {
  const open = state.open;
  if (!open || open.kind === 'viewer') return false;
  const body = { text };
  if (open.kind === 'member') body.conversation_id = open.id;
  const res = await state.client.post('/v1/messages/send', body);
  const time = Math.floor(Date.now() / 1000);
  if (open.kind === 'global') {
    state.sentGlobalIds.add(res.id);
    sessionStorage.setItem(SENT_IDS_KEY, JSON.stringify([...state.sentGlobalIds].slice(-500)));
    if (!state.global.messages.has(res.id)) state.global.messages.set(res.id, { id: res.id, message: text, time });
    if (state.open === open) upsertMessageNode(state.global.messages.get(res.id), true);
    renderSidebar();
  } else {
    if (!open.messages.has(res.id)) {
      const msg = { id: res.id, user_id: state.me.id, name: state.me.name, avatar: state.me.avatar, message: text, time };
      open.messages.set(res.id, msg);
      if (state.open === open) upsertMessageNode(msg, true);
    }
    const entry = state.joined.get(open.id);
    if (entry) {
      Object.assign(entry, { message: text, senderAvatar: state.me.avatar || entry.senderAvatar, activity: ++state.activity, unreadCount: 0 });
      renderSidebar();
    }
  }
  return true;
}
