// Live updates: what to do on (re)connecting and on each server event of
// docs/API.md §3.

import { state, entryFor, isOpen, nextOpenToken } from './state.js';
import { toast, reportError } from './ui.js';
import { renderMe, renderStatus } from './shell.js';
import { renderSidebar } from './sidebar.js';
import { moveToJoined, moveToNew, addFresh, loadLists, loadGlobal, removeConversation } from './lists.js';
import { setOpen, closeChat, openConversation, loadMemberMessages, openViewer, loadViewerMessages, markRead, renderChatHeader } from './conversation.js';
import { upsertMessageNode, addServiceLine } from './messages.js';
import { noticeMessage } from './outbox.js';
import { pageActive } from './attention.js';
import { loadInfo, renderInfo } from './info.js';

export async function onConnected(data) {
  state.online = true;
  if (data.user_id) state.me.id = data.user_id;
  renderMe();
  renderStatus();
  // Resumed: the missed events arrive on the socket, the subscriptions carried over.
  if (data.resumed) return;
  try {
    await Promise.all([loadLists(), loadGlobal()]);
  } catch (err) {
    reportError(err);
  }
  // Re-open what was open: the new socket has no subscriptions yet.
  const open = state.open;
  if (open && open.kind === 'member') {
    if (!state.joined.has(open.id)) {
      if (state.fresh.has(open.id)) openViewer(open.id);
      else { closeChat(); toast('Этой беседы больше нет', 'info'); }
    } else {
      loadMemberMessages(open);
    }
  } else if (open && open.kind === 'viewer') {
    if (state.joined.has(open.id)) openConversation(open.id);
    else if (!state.fresh.has(open.id)) { state.open = null; closeChat(); toast('Этой беседы больше нет', 'info'); }
    else loadViewerMessages(open);
  }
  if (state.info) loadInfo(state.info.id);
}

export function onServerEvent({ event, data }) {
  if (!data) return;
  switch (event) {
    case 'new_message': onNewMessage(data); break;
    case 'joined_conversation': onJoined(data); break;
    case 'leaved_conversation': onLeft(data); break;
    case 'new_conversation': onNewConversation(data); break;
    case 'delete_conversation': onDeleted(data); break;
    case 'conversationViewersChange': onViewersChange(data); break;
    default: break;
  }
}

function onNewMessage(data) {
  const id = data.conversation_id;
  const msg = { ...data };
  delete msg.conversation_id;
  if (!id) {
    if (noticeMessage(0, msg)) return; // perhaps our own, whose answer is on its way
    const known = state.global.messages.has(msg.id);
    state.global.messages.set(msg.id, msg);
    const openHere = state.open && state.open.kind === 'global';
    if (openHere) upsertMessageNode(msg);
    // Unseen while the page is in the background, even with the chat open.
    if ((!openHere || !pageActive()) && !known && !state.sentGlobalIds.has(msg.id)) state.global.unread += 1;
    renderSidebar();
    return;
  }
  noticeMessage(id, msg);
  const entry = state.joined.get(id);
  const openHere = isOpen(id);
  if (entry) {
    entry.message = data.message;
    entry.senderAvatar = data.avatar;
    entry.activity = ++state.activity;
    if (openHere && state.open.kind === 'member' && pageActive()) markRead(id);
    else if (data.user_id !== state.me.id) entry.unreadCount = (entry.unreadCount || 0) + 1;
    renderSidebar();
  }
  if (openHere) {
    state.open.messages.set(msg.id, msg);
    upsertMessageNode(msg);
  }
}

function onJoined(data) {
  const id = data.conversation_id;
  for (const entry of [state.joined.get(id), state.fresh.get(id)]) if (entry) entry.members = (entry.members || 0) + 1;
  if (data.name) state.names.set(data.user_id, data.name);
  if (data.user_id === state.me.id) {
    if (!moveToJoined(id)) loadLists().catch(() => {});
    // Joined from another tab: the server ended this tab's viewing.
    if (state.open && state.open.kind === 'viewer' && state.open.id === id && !state.pendingJoins.has(id)) {
      const open = {
        kind: 'member', id, messages: state.open.messages, events: state.open.events, hasMore: false, loading: false, token: nextOpenToken(),
      };
      addServiceLine(open, 'joined', data.user_id, data.name);
      state.open = null;
      setOpen(open);
      loadMemberMessages(open);
    }
  } else if (isOpen(id)) {
    addServiceLine(state.open, 'joined', data.user_id, data.name);
  }
  if (state.info && state.info.id === id && state.info.data) {
    const info = state.info.data;
    if (!info.users.some((u) => u.user_id === data.user_id)) {
      info.users.push({ user_id: data.user_id, name: data.name, avatar: data.avatar });
      info.members = info.users.length;
    }
    renderInfo();
  }
  renderChatHeader();
  renderSidebar();
}

function onLeft(data) {
  const id = data.conversation_id;
  for (const entry of [state.joined.get(id), state.fresh.get(id)]) if (entry) entry.members = Math.max(0, (entry.members || 0) - 1);
  if (data.user_id === state.me.id) {
    moveToNew(id);
    if (isOpen(id) && state.open.kind === 'member') {
      closeChat();
      toast('Вы вышли из беседы', 'info');
    }
  } else if (isOpen(id)) {
    addServiceLine(state.open, 'left', data.user_id);
  }
  if (state.info && state.info.id === id && state.info.data) {
    const info = state.info.data;
    info.users = info.users.filter((u) => u.user_id !== data.user_id);
    info.members = info.users.length;
    renderInfo();
  }
  renderChatHeader();
  renderSidebar();
}

function onNewConversation(data) {
  const id = data.conversation_id;
  if (state.joined.has(id) || state.fresh.has(id)) return;
  const pending = state.pendingCreates.get(data.name);
  if (pending) {
    // Most likely ours: the create request's answer will file it.
    pending.push(data);
    return;
  }
  addFresh(data);
  renderSidebar();
  // Who created it is not in the event; if it was us in another tab or
  // device, we are its member and it belongs to "my conversations".
  state.client.get(`/v1/conversations/info/${id}`).then((res) => {
    const conv = res.conversation;
    const entry = entryFor(id);
    if (!entry) return;
    Object.assign(entry, { creator_id: conv.creator_id, members: conv.members, viewers: conv.viewers });
    if (conv.users.some((u) => u.user_id === state.me.id)) {
      moveToJoined(id, { message: 'Создана беседа.', senderAvatar: data.senderAvatar || '' });
    }
    renderSidebar();
    renderChatHeader();
  }).catch(() => {});
}

function onDeleted(data) {
  const id = data.conversation_id;
  const entry = entryFor(id);
  const wasOpen = isOpen(id);
  removeConversation(id);
  if (wasOpen) toast(`Беседа «${entry ? entry.name : id}» удалена`, 'info');
}

function onViewersChange(data) {
  const entry = entryFor(data.conversation_id);
  if (entry) entry.viewers = data.viewers;
  if (state.info && state.info.id === data.conversation_id && state.info.data) {
    state.info.data.viewers = data.viewers;
    renderInfo();
  }
  if (isOpen(data.conversation_id)) renderChatHeader();
  renderSidebar();
}
