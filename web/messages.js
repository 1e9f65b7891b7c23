// The open chat's message list: building message nodes, inserting them in
// id order, and keeping the list scrolled to the bottom when it was there.

import { avatar, formatTime, h } from './dom.js';
import { state, ui } from './state.js';
import { loadEarlier } from './conversation.js';
import { renderOutbox } from './outbox.js';

function isMine(m) {
  if (state.open && state.open.kind === 'global') return state.sentGlobalIds.has(m.id);
  return m.user_id != null && m.user_id === state.me.id;
}

function messageNode(m) {
  const mine = isMine(m);
  const anonymous = m.user_id == null;
  return h('div', {
    class: `msg${mine ? ' mine' : ''}${anonymous ? ' anon' : ''}`, testid: 'message',
    dataset: { id: m.id, mine: String(mine), userId: anonymous ? '' : m.user_id, ...(mine ? { state: 'sent' } : {}) },
  },
  !mine && !anonymous ? avatar({ url: m.avatar, name: m.name, seed: m.user_id, size: 32, extraClass: 'msg-avatar' }) : null,
  h('div', { class: 'bubble' },
    !mine && !anonymous ? h('div', { class: 'msg-author', testid: 'message-author' }, m.name || `id${m.user_id}`) : null,
    h('div', { class: 'msg-text', testid: 'message-text' }, m.message),
    h('time', { class: 'msg-time', datetime: new Date(m.time * 1000).toISOString() }, formatTime(m.time))));
}

export function fillMessages() {
  const open = state.open;
  const list = ui.messageList;
  const nodes = [];
  if (open.hasMore && open.kind !== 'viewer') {
    nodes.push(h('button', { class: 'load-earlier', testid: 'load-earlier', onclick: () => loadEarlier() }, 'Показать предыдущие'));
  }
  if (open.loading) {
    nodes.push(h('div', { class: 'messages-loading', testid: 'messages-loading' }, h('div', { class: 'spinner' })));
  }
  const messages = [...open.messages.values()].sort((a, b) => a.id - b.id);
  for (const m of messages) nodes.push(messageNode(m));
  if (!open.loading && !messages.length) {
    nodes.push(h('div', { class: 'messages-empty', testid: 'messages-empty' }, 'Сообщений пока нет. Напишите первым!'));
  }
  list.replaceChildren(...nodes);
  renderOutbox();
}

export function nearBottom() {
  const list = ui.messageList;
  return !list || list.scrollHeight - list.scrollTop - list.clientHeight < 120;
}

export function scrollToBottom(force) {
  const list = ui.messageList;
  if (!list) return;
  if (force || nearBottom()) requestAnimationFrame(() => { list.scrollTop = list.scrollHeight; });
}

/** Put a message into the open chat's list in id order (replacing a copy). */
export function upsertMessageNode(m, forceScroll = false) {
  const list = ui.messageList;
  if (!list) return;
  const stick = forceScroll || nearBottom();
  list.querySelector('[data-testid="messages-empty"]')?.remove();
  const node = messageNode(m);
  const existing = list.querySelector(`[data-testid="message"][data-id="${m.id}"]`);
  if (existing) {
    existing.replaceWith(node);
    return;
  }
  const all = list.querySelectorAll('[data-testid="message"]');
  let before = null;
  for (let i = all.length - 1; i >= 0; i -= 1) {
    if (Number(all[i].dataset.id) < m.id) break;
    before = all[i];
  }
  if (before) list.insertBefore(node, before);
  else list.append(node);
  renderOutbox();
  if (stick) scrollToBottom(true);
}
