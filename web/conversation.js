// The chat pane: which chat is open, loading its messages (as a member, a
// viewer, or the anonymous chat), its header, and marking it read.

import { ApiError } from './api.js';
import { avatar, countText, h } from './dom.js';
import { PAGE_SIZE, VIEW_PAGE_SIZE, MEMBERS, VIEWERS, state, ui, entryFor, nextOpenToken } from './state.js';
import { toast, reportError, icon } from './ui.js';
import { renderSidebar } from './sidebar.js';
import { moveToNew, loadLists, loadGlobal } from './lists.js';
import { joinConversation, leaveConversation, deleteConversation } from './membership.js';
import {
  createMessagePane, fillMessages, nearBottom, scrollToBottom, markFirstUnread, revealMark, newestId, learnMemberNames,
} from './messages.js';
import { buildComposer } from './composer.js';
import { toggleInfo, closeInfo } from './info.js';
import { reconcileHistory } from './outbox.js';
import { pageActive } from './attention.js';

export function setOpen(open) {
  const prev = state.open;
  if (prev && prev.kind === 'viewer' && !(open && open.kind === 'viewer' && open.id === prev.id)) {
    const id = prev.id;
    if (state.client.connected) state.client.get(`/v1/conversations/stopView/${id}`).catch(() => {});
  }
  state.open = open;
  if (!open || (state.info && state.info.id !== open.id)) closeInfo();
  document.body.classList.toggle('chat-open', Boolean(open));
  renderChat();
  renderSidebar();
}

export function closeChat() {
  nextOpenToken();
  setOpen(null);
}

export function openGlobal() {
  const token = nextOpenToken();
  const unread = state.global.loaded ? state.global.unread : 0;
  state.global.unread = 0;
  const open = { kind: 'global', id: 0, messages: state.global.messages, hasMore: state.global.hasMore, loading: !state.global.loaded, token };
  setOpen(open);
  markFirstUnread(open, unread, newestId(state.global.messages.values()));
  if (!state.global.loaded) loadGlobal().catch(reportError);
  focusComposer();
}

export async function openConversation(id) {
  if (!state.joined.has(id)) { openViewer(id); return; }
  const token = nextOpenToken();
  // Counted before anything marks it read: the "Новые сообщения" mark goes there.
  const unreadAtOpen = state.joined.get(id).unreadCount || 0;
  const open = { kind: 'member', id, messages: new Map(), hasMore: false, loading: true, token, unreadAtOpen };
  setOpen(open);
  focusComposer();
  learnMemberNames(id);
  await loadMemberMessages(open);
}

export async function loadMemberMessages(open) {
  try {
    const res = await state.client.get('/v1/messages/get', { chat: open.id });
    if (state.open !== open) return;
    for (const m of res.messages) open.messages.set(m.id, m);
    open.hasMore = res.messages.length >= PAGE_SIZE;
    open.loading = false;
    renderChat();
    reconcileHistory(open.id, res.messages);
    if (open.unreadAtOpen) {
      markFirstUnread(open, open.unreadAtOpen, newestId(res.messages));
      open.unreadAtOpen = 0; // a refetch after a reconnect does not move it
    }
    markRead(open.id, true);
  } catch (err) {
    if (state.open !== open) return;
    handleOpenError(err, open.id);
  }
}

export async function openViewer(id) {
  if (state.joined.has(id)) { openConversation(id); return; }
  const token = nextOpenToken();
  const open = { kind: 'viewer', id, messages: new Map(), hasMore: false, loading: true, token };
  setOpen(open);
  learnMemberNames(id);
  await loadViewerMessages(open);
}

export async function loadViewerMessages(open) {
  try {
    const res = await state.client.get(`/v1/conversations/view/${open.id}`);
    if (state.open !== open) {
      // Closed while the request ran: stop the viewing it started.
      if (!(state.open && state.open.kind === 'viewer' && state.open.id === open.id)) {
        state.client.get(`/v1/conversations/stopView/${open.id}`).catch(() => {});
      }
      return;
    }
    for (const m of res.messages) open.messages.set(m.id, m);
    // Viewers get no earlier pages; this only tells whether the first message is among these.
    open.hasMore = res.messages.length >= VIEW_PAGE_SIZE;
    open.loading = false;
    renderChat();
  } catch (err) {
    if (state.open !== open) return;
    if (err instanceof ApiError && err.status === 409) {
      // Already a member (joined from another tab): open it as a member.
      await loadLists().catch(() => {});
      openConversation(open.id);
      return;
    }
    handleOpenError(err, open.id);
  }
}

export function handleOpenError(err, id) {
  if (err instanceof ApiError && err.status === 404) {
    state.joined.delete(id);
    state.fresh.delete(id);
    closeChat();
    toast('Этой беседы больше нет', 'info');
    return;
  }
  if (err instanceof ApiError && err.status === 403) {
    moveToNew(id);
    closeChat();
  }
  reportError(err);
}

export async function loadEarlier() {
  const open = state.open;
  // One page at a time: the offset is what is loaded, so a second request meanwhile would fetch the same page.
  if (!open || open.kind === 'viewer' || !open.hasMore || open.loadingEarlier) return;
  open.loadingEarlier = true;
  const chat = open.kind === 'global' ? 0 : open.id;
  try {
    const res = await state.client.get('/v1/messages/get', { chat, offset: open.messages.size });
    if (state.open !== open) return;
    for (const m of res.messages) open.messages.set(m.id, m);
    open.hasMore = res.messages.length >= PAGE_SIZE;
    if (open.kind === 'global') state.global.hasMore = open.hasMore;
    const list = ui.messageList;
    const before = list ? list.scrollHeight - list.scrollTop : 0;
    renderChat();
    if (ui.messageList) ui.messageList.scrollTop = ui.messageList.scrollHeight - before;
    revealMark(open);
  } catch (err) {
    reportError(err);
  } finally {
    open.loadingEarlier = false;
  }
}

/** Mark a conversation read on the server, if the user can see it; else it waits for onPageActive. */
export function markRead(id, now = false) {
  if (!pageActive()) return;
  const entry = state.joined.get(id);
  if (entry && entry.unreadCount) {
    entry.unreadCount = 0;
    renderSidebar();
  }
  clearTimeout(state.readTimers.get(id));
  const run = () => {
    state.readTimers.delete(id);
    if (!state.joined.has(id)) return;
    state.client.get(`/v1/conversations/read/${id}`).catch((err) => {
      if (!(err instanceof ApiError && (err.status === 404 || err.status === 403))) reportError(err);
    });
  };
  if (now) run();
  else state.readTimers.set(id, setTimeout(run, 250));
}

/** The user is back: what the open chat showed meanwhile is read now. */
export function onPageActive() {
  const open = state.open;
  if (!open) return;
  // What arrives during the next absence gets a "Новые сообщения" mark of its own.
  open.awayMark = false;
  if (open.kind === 'global' && state.global.unread) {
    state.global.unread = 0;
    renderSidebar();
  }
  const entry = open.kind === 'member' && !open.loading ? state.joined.get(open.id) : null;
  if (entry && entry.unreadCount) markRead(open.id, true);
}

export function renderChat() {
  const open = state.open;
  if (open && ui.renderedOpen === open && ui.messageList && ui.messageList.isConnected) {
    // Same chat: refresh in place, keeping the composer (and its focus) intact.
    const stick = nearBottom();
    renderChatHeader();
    fillMessages();
    if (stick) scrollToBottom(true);
    return;
  }
  ui.renderedOpen = open;
  ui.messageList = null;
  ui.header = null;
  ui.composerInput = null;
  if (!open) {
    ui.chat.replaceChildren(h('div', { class: 'chat-empty', testid: 'chat-empty' },
      h('div', { class: 'chat-empty-icon' }, icon('users')),
      h('h2', null, 'Выберите беседу'),
      h('p', null, 'Откройте беседу слева, загляните в анонимный чат или создайте свою.')));
    ui.chat.dataset.kind = 'none';
    return;
  }
  ui.chat.dataset.kind = open.kind;
  ui.chat.dataset.conversationId = open.id;
  ui.header = h('header', { class: 'chat-head' });
  renderChatHeader();

  const pane = createMessagePane();
  fillMessages();

  const parts = [ui.header, pane];
  if (open.kind === 'viewer') {
    parts.push(h('div', { class: 'viewer-banner', testid: 'viewer-banner' },
      h('span', null, icon('eye'), 'Вы смотрите беседу как зритель: писать могут только участники.'),
      h('button', { class: 'btn btn-primary', testid: 'viewer-join', onclick: () => joinConversation(open.id) }, 'Вступить')));
  } else {
    parts.push(buildComposer());
  }
  ui.chat.replaceChildren(...parts);
  scrollToBottom(true);
}

export function renderChatHeader() {
  const open = state.open;
  if (!open || !ui.header) return;
  let title;
  let sub;
  const actions = [];
  if (open.kind === 'global') {
    title = 'Анонимный чат';
    sub = [h('span', { class: 'chat-sub-text' }, 'Все пишут анонимно — имена не показываются')];
  } else {
    const entry = entryFor(open.id) || {};
    title = entry.name || '…';
    sub = [
      h('span', { class: 'chat-count', testid: 'chat-members', dataset: { count: entry.members || 0 } }, countText(entry.members || 0, MEMBERS)),
      h('span', { class: 'chat-count', testid: 'chat-viewers', dataset: { count: entry.viewers || 0 } }, icon('eye'), countText(entry.viewers || 0, VIEWERS)),
    ];
    if (open.kind === 'viewer') sub.unshift(h('span', { class: 'tag' }, 'зритель'));
    actions.push(h('button', { class: 'icon-btn', title: 'О беседе', 'aria-label': 'О беседе', testid: 'chat-info', onclick: () => toggleInfo(open.id) }, icon('info')));
    if (open.kind === 'member') {
      actions.push(h('button', { class: 'icon-btn', title: 'Покинуть беседу', 'aria-label': 'Покинуть беседу', testid: 'chat-leave', onclick: () => leaveConversation(open.id) }, icon('leave')));
    } else {
      actions.push(h('button', { class: 'btn btn-small btn-primary', testid: 'chat-join', onclick: () => joinConversation(open.id) }, 'Вступить'));
    }
    if (entry.creator_id != null && entry.creator_id === state.me.id) {
      actions.push(h('button', { class: 'icon-btn danger', title: 'Удалить беседу', 'aria-label': 'Удалить беседу', testid: 'chat-delete', onclick: () => deleteConversation(open.id) }, icon('trash')));
    }
  }
  const sig = JSON.stringify([open.kind, open.id, title, sub.map((el) => el.textContent), actions.map((el) => el.dataset.testid)]);
  if (ui.header.dataset.sig === sig) return;
  ui.header.dataset.sig = sig;
  const avatarEl = open.kind === 'global'
    ? h('span', { class: 'avatar global-avatar', style: '--size:40px' }, icon('mask'))
    : avatar({ name: title, seed: `c${open.id}`, size: 40 });
  ui.header.replaceChildren(
    h('button', { class: 'icon-btn back-btn', title: 'Назад', 'aria-label': 'Назад', testid: 'chat-back', onclick: () => closeChat() }, icon('back')),
    avatarEl,
    // Tapping the title opens the info panel, as in any messenger; on phones
    // it is the only way there (the actions make room for VK's buttons).
    h(open.kind === 'global' ? 'div' : 'button', {
      class: 'chat-head-text', testid: 'chat-head-text',
      ...(open.kind === 'global' ? {} : { type: 'button', title: 'О беседе', onclick: () => toggleInfo(open.id) }),
    },
    h('span', { class: 'chat-title', testid: 'chat-title' }, title),
    h('span', { class: 'chat-sub' }, sub)),
    h('div', { class: 'chat-actions' }, actions));
}

export function focusComposer() {
  if (window.matchMedia('(pointer: fine)').matches && ui.composerInput && ui.composerInput.isConnected) ui.composerInput.focus();
}
