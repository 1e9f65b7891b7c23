// Outgoing messages from the moment Enter is pressed until the server has
// them: shown at once in their chat (sending, then sent; or failed with a
// retry), sent one at a time in the order typed, and kept in localStorage so
// that neither a refusal nor a reload drops a typed text.
//
// Sending twice is what must not happen. A send that never left the page
// (no socket yet) is safe to send again after a reload. A send that left but
// whose answer was lost (network cut, timeout, reload) may have been stored:
// it is shown as failed, and in a conversation it is dropped as soon as the
// user's own message with that text turns up (in the history or as an event)
// past what the chat showed when it was typed. The anonymous chat has no
// sender data to compare, so there such a message stays failed and the user
// decides whether to retry.

import { ApiError } from './api.js';
import { h } from './dom.js';
import { SENT_IDS_KEY, state, ui } from './state.js';
import { icon, reportError } from './ui.js';
import { renderSidebar } from './sidebar.js';
import { upsertMessageNode, scrollToBottom } from './messages.js';

const STORAGE_PREFIX = 'chat.outbox.';
// A stored copy of our own message may carry a time up to this much before
// the moment we typed it (the server's clock against ours).
const CLOCK_SLACK_S = 300;
const TAB = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;

// {key, chat (0: anonymous chat), text, at (ms), after (newest id shown then),
//  state: 'sending'|'failed', issued (left the page), uncertain (may be stored), echo}
let entries = [];
let storageKey = null;
let pumping = false;
const nodes = new Map(); // key -> {sig, node}

function readStored() {
  try {
    const list = JSON.parse(localStorage.getItem(storageKey) || '[]');
    return Array.isArray(list) ? list.filter((e) => e && typeof e.text === 'string' && Number.isInteger(e.chat)) : [];
  } catch (err) {
    return [];
  }
}

/**
 * Write this tab's entries, keeping those other tabs of the same user wrote
 * (they share localStorage): each entry carries the tab that owns it.
 */
function save() {
  if (!storageKey) return;
  const others = readStored().filter((e) => e.tab !== TAB && !entries.some((mine) => mine.key === e.key));
  const mine = entries.map(({ echo, inFlight, ...kept }) => ({ ...kept, tab: TAB }));
  try {
    localStorage.setItem(storageKey, JSON.stringify([...others, ...mine]));
  } catch (err) { /* storage full or refused: the texts stay on screen */ }
}

/**
 * Take over what earlier pages of this user left unsent (not what another
 * open tab is still sending: each tab holds a Web Lock named after it while
 * it lives), and start sending what never left.
 */
export async function loadOutbox(userId) {
  storageKey = `${STORAGE_PREFIX}${userId}`;
  let live = new Set();
  if (navigator.locks) {
    navigator.locks.request(`chat-tab-${TAB}`, () => new Promise(() => {})).catch(() => {});
    try {
      const { held } = await navigator.locks.query();
      live = new Set(held.map((lock) => lock.name));
    } catch (err) { /* take everything */ }
  }
  entries = readStored().filter((e) => !live.has(`chat-tab-${e.tab}`)).map((e) => {
    const entry = { ...e, tab: TAB };
    if (entry.state === 'sending' && entry.issued) {
      // Its answer never came: it may or may not be stored.
      entry.state = 'failed';
      entry.uncertain = true;
    }
    entry.issued = false;
    return entry;
  });
  save();
  renderOutbox();
  renderSidebar();
  pump();
}

export function chatOf(open) {
  return open.kind === 'global' ? 0 : open.id;
}

function newestShown(chat) {
  let messagesMap = null;
  if (chat === 0) messagesMap = state.global.messages;
  else if (state.open && state.open.kind === 'member' && state.open.id === chat) messagesMap = state.open.messages;
  let newest = 0;
  for (const id of (messagesMap ? messagesMap.keys() : [])) if (id > newest) newest = id;
  return newest;
}

/** The composer's send: the text is in the chat (and in storage) before anything else happens. */
export function enqueue(chat, text) {
  const entry = {
    key: `${TAB}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
    chat, text, at: Date.now(), after: newestShown(chat), state: 'sending', issued: false, uncertain: false,
  };
  entries.push(entry);
  save();
  renderOutbox(true);
  pump();
}

function retry(entry) {
  if (!entries.includes(entry) || entry.state !== 'failed') return;
  // Sent now, so it goes after everything else waiting.
  entries = entries.filter((e) => e !== entry);
  Object.assign(entry, { state: 'sending', uncertain: false, issued: false, after: Math.max(entry.after, newestShown(entry.chat)) });
  entries.push(entry);
  save();
  renderOutbox(true);
  renderSidebar();
  pump();
}

function discard(entry) {
  entries = entries.filter((e) => e !== entry);
  save();
  releaseEcho(entry);
  renderOutbox();
  renderSidebar();
}

async function pump() {
  if (pumping || !state.client) return;
  pumping = true;
  try {
    for (;;) {
      const entry = entries.find((e) => e.state === 'sending');
      if (!entry) break;
      await deliver(entry);
    }
  } finally {
    pumping = false;
  }
}

async function deliver(entry) {
  await state.client.ready;
  if (!entries.includes(entry)) return;
  entry.issued = true;
  entry.inFlight = true;
  save();
  const body = { text: entry.text };
  if (entry.chat) body.conversation_id = entry.chat;
  try {
    const res = await state.client.post('/v1/messages/send', body);
    entry.inFlight = false;
    if (entries.includes(entry)) settle(entry, res.id, entry.echo && entry.echo.id === res.id ? entry.echo : null);
  } catch (err) {
    entry.inFlight = false;
    if (!entries.includes(entry)) return; // its own message already came back as an event
    // 4xx (and 429) mean not stored; no answer or 5xx may mean stored.
    const uncertain = !(err instanceof ApiError) || err.status === 0 || err.status >= 500;
    Object.assign(entry, { state: 'failed', uncertain, issued: false });
    save();
    releaseEcho(entry);
    renderOutbox();
    renderSidebar();
    reportError(err);
  }
}

/** The server has it as message `id`: the pending copy gives way to the stored one. */
function settle(entry, id, stored) {
  entries = entries.filter((e) => e !== entry);
  save();
  if (entry.echo && entry.echo.id !== id) releaseEcho(entry);
  const time = Math.floor(Date.now() / 1000);
  const open = state.open;
  if (entry.chat === 0) {
    state.sentGlobalIds.add(id);
    try {
      sessionStorage.setItem(SENT_IDS_KEY, JSON.stringify([...state.sentGlobalIds].slice(-500)));
    } catch (err) { /* ignore */ }
    if (!state.global.messages.has(id)) state.global.messages.set(id, stored || { id, message: entry.text, time });
    if (open && open.kind === 'global') upsertMessageNode(state.global.messages.get(id), true);
  } else {
    const msg = stored || { id, user_id: state.me.id, name: state.me.name, avatar: state.me.avatar, message: entry.text, time };
    if (open && open.kind === 'member' && open.id === entry.chat) {
      if (!open.messages.has(id)) open.messages.set(id, msg);
      upsertMessageNode(open.messages.get(id), true);
    }
    const conv = state.joined.get(entry.chat);
    // Sending marks the conversation read for the sender (docs/API.md, messages/send).
    if (conv) Object.assign(conv, { message: entry.text, senderAvatar: state.me.avatar || conv.senderAvatar, activity: ++state.activity, unreadCount: 0 });
  }
  renderOutbox();
  renderSidebar();
}

/** A message held back as a possible echo of ours turned out not to be ours: show it. */
function releaseEcho(entry) {
  const echo = entry.echo;
  if (!echo) return;
  entry.echo = null;
  if (state.global.messages.has(echo.id)) return;
  state.global.messages.set(echo.id, echo);
  if (state.open && state.open.kind === 'global') upsertMessageNode(echo);
  else state.global.unread += 1;
  renderSidebar();
}

function mayBeOurs(entry, m) {
  return m.message === entry.text && m.id > entry.after && (!m.time || m.time >= entry.at / 1000 - CLOCK_SLACK_S);
}

/**
 * A `new_message` event, before it is shown. In a conversation, our own
 * message settles the entry that sent it (whichever of the event and the
 * answer comes first). In the anonymous chat nothing says who sent it: a
 * message with the text we are sending right now is held back until our
 * answer tells. Returns true when the caller must not show it (held).
 */
export function noticeMessage(chat, m) {
  if (chat === 0) {
    if (state.sentGlobalIds.has(m.id)) return false;
    const entry = entries.find((e) => e.chat === 0 && e.inFlight && !e.echo && mayBeOurs(e, m));
    if (!entry) return false;
    entry.echo = m;
    return true;
  }
  if (m.user_id !== state.me.id) return false;
  const entry = entries.find((e) => e.chat === chat && (e.issued || e.uncertain) && mayBeOurs(e, m));
  if (entry) settle(entry, m.id, m);
  return false;
}

/** A conversation's history was loaded: entries it shows as stored are done. */
export function reconcileHistory(chat, messages) {
  if (chat === 0) return;
  const used = new Set();
  for (const entry of entries.filter((e) => e.chat === chat && e.state === 'failed' && e.uncertain)) {
    const m = messages.find((x) => x.user_id === state.me.id && !used.has(x.id) && mayBeOurs(entry, x));
    if (!m) continue;
    used.add(m.id);
    settle(entry, m.id, m);
  }
}

function pendingNode(entry) {
  const status = entry.state === 'sending'
    ? h('span', { class: 'msg-time msg-status', testid: 'message-status', title: 'Отправляется', 'aria-label': 'отправляется' }, icon('clock'))
    : h('div', { class: 'msg-status msg-failed', testid: 'message-status' },
      'не отправлено · ',
      h('button', { type: 'button', class: 'link-btn', testid: 'message-retry', onclick: () => retry(entry) }, 'повторить'),
      h('button', {
        type: 'button', class: 'link-btn msg-discard', testid: 'message-discard', title: 'Удалить', 'aria-label': 'Удалить', onclick: () => discard(entry),
      }, '×'));
  return h('div', {
    class: `msg mine pending${entry.state === 'failed' ? ' failed' : ''}`, testid: 'message',
    dataset: { key: entry.key, mine: 'true', state: entry.state },
  },
  h('div', { class: 'bubble' },
    h('div', { class: 'msg-text', testid: 'message-text' }, entry.text),
    status));
}

/** Keep the open chat's unsent messages at the end of its list, after everything stored. */
export function renderOutbox(forceScroll = false) {
  const list = ui.messageList;
  const open = state.open;
  if (!list || !open || open.kind === 'viewer') {
    nodes.clear();
    return;
  }
  const chat = chatOf(open);
  const mine = entries.filter((e) => e.chat === chat);
  const keep = new Set();
  const wanted = mine.map((entry) => {
    const sig = `${entry.state}`;
    let cached = nodes.get(entry.key);
    if (!cached || cached.sig !== sig || cached.list !== list) {
      cached = { sig, list, node: pendingNode(entry) };
      nodes.set(entry.key, cached);
    }
    keep.add(entry.key);
    return cached.node;
  });
  for (const [key, cached] of [...nodes]) {
    if (!keep.has(key)) nodes.delete(key);
  }
  for (const stale of list.querySelectorAll('.msg.pending')) if (!wanted.includes(stale)) stale.remove();
  if (wanted.length) list.querySelector('[data-testid="messages-empty"]')?.remove();
  const tail = [...list.children].slice(-wanted.length);
  if (!wanted.every((node, i) => tail[i] === node)) list.append(...wanted);
  if (forceScroll) scrollToBottom(true);
}

/** The newest text of a chat that could not be sent, or null. */
export function failedText(chat) {
  for (let i = entries.length - 1; i >= 0; i -= 1) {
    if (entries[i].chat === chat && entries[i].state === 'failed') return entries[i].text;
  }
  return null;
}
