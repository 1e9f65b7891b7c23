// The open chat's message list: the rows of timeline.js turned into nodes
// (a node is kept across renders while its row is unchanged, so a new message
// neither re-animates nor re-creates the others), the "↓ N новых" button,
// the "Новые сообщения" mark, service lines for joins and leaves, and keeping
// the list scrolled to the bottom when it was there.

import { avatar, formatClock, h, plural, userColor } from './dom.js';
import { state, ui, entryFor } from './state.js';
import { loadEarlier } from './conversation.js';
import { buildTimeline, firstUnreadId, serviceText } from './timeline.js';
import { renderOutbox } from './outbox.js';
import { pageActive } from './attention.js';

// Scrolled this close to the top, the next page above is fetched.
const LOAD_EARLIER_MARGIN = 300;

const NEW_BELOW = ['новое', 'новых', 'новых'];
const NEW_BELOW_SPOKEN = ['новое сообщение', 'новых сообщения', 'новых сообщений'];

// Per rendered list: row key -> {sig, node}.
const nodeCaches = new WeakMap();
let eventSeq = 0;

function isMine(m) {
  if (state.open && state.open.kind === 'global') return state.sentGlobalIds.has(m.id);
  return m.user_id != null && m.user_id === state.me.id;
}

function senderKey(m) {
  // Anonymous messages cannot be told apart by sender, except our own.
  if (state.open.kind === 'global') return isMine(m) ? 'me' : null;
  return m.user_id ?? null;
}

function messageNode(m, row) {
  const mine = isMine(m);
  const anonymous = m.user_id == null;
  const showSender = !mine && !anonymous;
  const classes = ['msg', mine && 'mine', anonymous && 'anon', row.groupStart && 'group-start', row.groupEnd && 'group-end'];
  let side = null;
  if (showSender) {
    // The avatar by the group's last message; the others keep its room.
    side = row.groupEnd
      ? avatar({ url: m.avatar, name: m.name, seed: m.user_id, size: 32, extraClass: 'msg-avatar', testid: 'message-avatar' })
      : h('span', { class: 'msg-avatar-space', 'aria-hidden': 'true' });
  }
  return h('div', {
    class: classes.filter(Boolean).join(' '), testid: 'message',
    dataset: { id: m.id, mine: String(mine), userId: anonymous ? '' : m.user_id, ...(mine ? { state: 'sent' } : {}) },
  },
  side,
  h('div', { class: 'bubble' },
    showSender && row.groupStart
      ? h('div', { class: 'msg-author', testid: 'message-author', style: `--user-color:${userColor(m.user_id)}` }, m.name || `id${m.user_id}`)
      : null,
    h('div', { class: 'msg-text', testid: 'message-text' }, m.message),
    h('time', { class: 'msg-time', datetime: m.time ? new Date(m.time * 1000).toISOString() : null }, formatClock(m.time))));
}

function rowText(row) {
  if (row.type === 'service') return serviceText(row.kind, row.name, row.userId != null && row.userId === state.me.id);
  return row.label;
}

function rowSig(row) {
  if (row.type !== 'message') return rowText(row);
  const m = row.message;
  return JSON.stringify([m.id, m.message, m.name, m.avatar, m.user_id, m.time, isMine(m), row.groupStart, row.groupEnd]);
}

function rowNode(row) {
  switch (row.type) {
    case 'date':
      return h('div', { class: 'list-divider date-divider', testid: 'date-separator', role: 'separator' }, h('span', null, row.label));
    case 'unread':
      return h('div', { class: 'list-divider unread-divider', testid: 'unread-separator', role: 'separator' }, h('span', null, row.label));
    case 'service':
      return h('div', { class: 'service-line', testid: 'service-line', dataset: { kind: row.kind } }, h('span', null, rowText(row)));
    default:
      return messageNode(row.message, row);
  }
}

/** The list with the floating "↓ N новых" button over it; sets ui.messageList. */
export function createMessagePane() {
  const list = h('div', { class: 'messages', testid: 'message-list', role: 'log', 'aria-live': 'polite' });
  const button = h('button', {
    class: 'new-below', type: 'button', testid: 'new-messages-button', hidden: true,
    onclick: () => {
      list.scrollTop = list.scrollHeight;
      updateNewBelow();
    },
  });
  list.addEventListener('scroll', () => {
    updateNewBelow();
    if (list.scrollTop < LOAD_EARLIER_MARGIN && state.open && state.open.hasMore && !state.open.loading) loadEarlier();
  }, { passive: true });
  ui.messageList = list;
  ui.newBelowButton = button;
  ui.unseenBelow = new Set();
  return h('div', { class: 'messages-pane' }, list, button);
}

export function fillMessages() {
  const open = state.open;
  const list = ui.messageList;
  const cache = nodeCaches.get(list) || new Map();
  const kept = new Map();
  const nodes = [];
  const put = (key, sig, make) => {
    const hit = cache.get(key);
    const node = hit && hit.sig === sig ? hit.node : make();
    kept.set(key, { sig, node });
    nodes.push(node);
  };
  if (open.hasMore && open.kind !== 'viewer') {
    put('load-earlier', '', () => h('button', { class: 'load-earlier', testid: 'load-earlier', onclick: () => loadEarlier() }, 'Показать предыдущие'));
  }
  if (open.loading) {
    put('loading', '', () => h('div', { class: 'messages-loading', testid: 'messages-loading' }, h('div', { class: 'spinner' })));
  }
  const messages = [...open.messages.values()];
  for (const m of messages) if (m.user_id != null && m.name) state.names.set(m.user_id, m.name);
  const startReached = !open.hasMore && !open.loading;
  const entry = open.kind === 'global' ? null : entryFor(open.id);
  const rows = buildTimeline({
    messages,
    events: open.events || [],
    firstUnreadId: open.unread ? firstUnreadId(messages, open.unread, startReached) : null,
    startReached: startReached && open.kind !== 'global',
    creatorId: entry ? entry.creator_id : null,
    senderKey,
  });
  for (const row of rows) put(row.key, rowSig(row), () => rowNode(row));
  if (!open.loading && !rows.length) {
    put('empty', '', () => h('div', { class: 'messages-empty', testid: 'messages-empty' }, 'Сообщений пока нет. Напишите первым!'));
  }
  nodeCaches.set(list, kept);
  placeChildren(list, nodes);
  renderOutbox();
  refreshAtMidnight();
}

/**
 * Make `nodes` the list's first children, touching only what changed. The
 * unsent messages after them belong to outbox.js and stay where they are.
 */
function placeChildren(list, nodes) {
  const wanted = new Set(nodes);
  for (const child of [...list.children]) if (!wanted.has(child) && !child.classList.contains('pending')) child.remove();
  nodes.forEach((node, i) => {
    const at = list.children[i];
    if (at !== node) list.insertBefore(node, at || null);
  });
}

// "Сегодня" becomes "Вчера" at midnight even when nothing arrives.
function refreshAtMidnight() {
  clearTimeout(ui.midnightTimer);
  const now = new Date();
  const next = new Date(now.getFullYear(), now.getMonth(), now.getDate() + 1, 0, 0, 1);
  ui.midnightTimer = setTimeout(() => {
    if (state.open && ui.messageList && ui.messageList.isConnected) fillMessages();
  }, next - now);
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

/**
 * A message was added to (or changed in) the open chat's `messages`: show
 * it, staying at the bottom if the list was there; otherwise count it on the
 * "↓ N новых" button.
 */
export function upsertMessageNode(m, forceScroll = false) {
  const list = ui.messageList;
  if (!list) return;
  const cache = nodeCaches.get(list);
  const isNew = !(cache && cache.has(`m:${m.id}`));
  // One's own new message is always shown, whichever of its event and its
  // send's answer comes first.
  const stick = forceScroll || nearBottom() || (isNew && isMine(m));
  const open = state.open;
  if (isNew && !isMine(m) && !pageActive() && !open.awayMark) {
    // The first message the user did not see arrive: the mark goes there.
    open.unread = { firstId: m.id };
    open.awayMark = true;
  }
  fillMessages();
  if (stick && open.awayMark) {
    keepMarkInView(list, m);
  } else if (stick) {
    scrollToBottom(true);
  } else if (isNew && !isMine(m)) {
    ui.unseenBelow.add(m.id);
    updateNewBelow();
  }
}

/**
 * Follow new messages down while the page is not seen, but never past the
 * "Новые сообщения" mark: the user comes back to the first one they missed,
 * and the rest count on the "↓ N новых" button.
 */
function keepMarkInView(list, m) {
  requestAnimationFrame(() => {
    const mark = list.querySelector('[data-testid="unread-separator"]');
    const bottom = list.scrollHeight - list.clientHeight;
    const atMark = mark ? list.scrollTop + mark.getBoundingClientRect().top - list.getBoundingClientRect().top - 8 : bottom;
    list.scrollTop = Math.min(bottom, Math.max(list.scrollTop, atMark));
    if (!isMine(m)) ui.unseenBelow.add(m.id);
    updateNewBelow();
  });
}

/** Drop from the count what came into view; hide the button at the bottom. */
function updateNewBelow() {
  const list = ui.messageList;
  const button = ui.newBelowButton;
  if (!list || !button || !ui.unseenBelow) return;
  if (list.scrollHeight - list.scrollTop - list.clientHeight < 4) ui.unseenBelow.clear();
  const bottom = list.getBoundingClientRect().bottom;
  for (const id of ui.unseenBelow) {
    const node = list.querySelector(`[data-testid="message"][data-id="${id}"]`);
    if (!node || node.getBoundingClientRect().top < bottom) ui.unseenBelow.delete(id);
  }
  const n = ui.unseenBelow.size;
  // Further up than a screen, a plain "↓" leads back even with nothing new.
  const far = list.scrollHeight - list.scrollTop - list.clientHeight > list.clientHeight;
  button.hidden = n === 0 && !far;
  const label = n ? `↓ ${n} ${plural(n, NEW_BELOW)}` : '↓';
  if (button.textContent !== label) {
    button.textContent = label;
    button.dataset.count = String(n);
    button.setAttribute('aria-label', n ? `${n} ${plural(n, NEW_BELOW_SPOKEN)}, к последним` : 'К последним сообщениям');
  }
}

/**
 * Opened with `count` unread messages (the newest ones up to `lastId`): mark
 * the first of them and show it at the top of the list.
 */
export function markFirstUnread(open, count, lastId) {
  if (!count) return;
  open.unread = { count, lastId };
  if (state.open !== open || !ui.messageList) return;
  fillMessages();
  const list = ui.messageList;
  // After the render's own scroll to the bottom (an earlier frame callback).
  open.revealMark = true;
  requestAnimationFrame(() => revealMark(open));
}

/**
 * Scroll the "Новые сообщения" mark to the top of the list, once. While the
 * first unread message is on a page above, go to the top instead: that
 * fetches the page (loadEarlier calls this again after it).
 */
export function revealMark(open) {
  const list = ui.messageList;
  if (!open.revealMark || state.open !== open || !list) return;
  const mark = list.querySelector('[data-testid="unread-separator"]');
  if (mark) {
    open.revealMark = false;
    list.scrollTop += mark.getBoundingClientRect().top - list.getBoundingClientRect().top - 8;
  } else if (open.hasMore) {
    list.scrollTop = 0;
  } else {
    open.revealMark = false;
  }
}

/** The newest message id of a list of messages, 0 for none. */
export function newestId(messages) {
  let newest = 0;
  for (const m of messages) if (m.id > newest) newest = m.id;
  return newest;
}

/**
 * Someone joined or left while the chat is open. The server keeps no record
 * of it (docs/API.md: only messages are stored), so it is shown live only,
 * after the newest message known now.
 */
export function addServiceLine(open, kind, userId, name) {
  open.events = open.events || [];
  open.events.push({
    kind, userId, name: name || state.names.get(userId) || '',
    time: Math.floor(Date.now() / 1000), afterId: newestId(open.messages.values()), seq: ++eventSeq,
  });
  if (state.open !== open || !ui.messageList) return;
  const stick = nearBottom();
  fillMessages();
  if (stick) scrollToBottom(true);
}

/** Learn the members' names, so a later "… покинул(а) беседу" can name them. */
export function learnMemberNames(id) {
  state.client.get(`/v1/conversations/info/${id}`).then((res) => {
    for (const u of res.conversation.users || []) if (u.name) state.names.set(u.user_id, u.name);
  }).catch(() => {});
}
