// The conversation lists' data: loading them and moving a conversation
// between "my conversations" and "new" as membership changes.

import { PAGE_SIZE, state, isOpen } from './state.js';
import { renderSidebar } from './sidebar.js';
import { closeChat, renderChat } from './conversation.js';
import { closeInfo } from './info.js';

export function moveToJoined(id, extra = {}) {
  let entry = state.joined.get(id);
  if (!entry) {
    const old = state.fresh.get(id);
    if (!old && !extra.name) return false;
    entry = {
      id,
      name: old ? old.name : extra.name,
      members: old ? old.members : 1,
      viewers: old ? old.viewers : 0,
      creator_id: old ? old.creator_id : null,
      unreadCount: 0,
      message: '',
      senderAvatar: '',
      activity: ++state.activity,
    };
    state.joined.set(id, entry);
  }
  state.fresh.delete(id);
  Object.assign(entry, extra);
  return true;
}

export function moveToNew(id) {
  const entry = state.joined.get(id);
  if (!entry) return;
  state.joined.delete(id);
  state.fresh.set(id, {
    id, name: entry.name, members: entry.members, viewers: entry.viewers, creator_id: entry.creator_id, activity: ++state.activity,
  });
}

export function addFresh(data) {
  const id = data.conversation_id;
  if (state.joined.has(id) || state.fresh.has(id)) return;
  state.fresh.set(id, { id, name: data.name, members: data.members ?? 1, viewers: 0, creator_id: null, activity: ++state.activity });
}

export async function loadLists() {
  const [joined, fresh] = await Promise.all([
    state.client.get('/v1/conversations/get', { mode: 'joined' }),
    state.client.get('/v1/conversations/get', { mode: 'new' }),
  ]);
  state.joined.clear();
  state.fresh.clear();
  joined.conversations.forEach((c, i) => state.joined.set(c.id, { ...c, activity: -i }));
  fresh.conversations.forEach((c, i) => {
    if (!state.joined.has(c.id)) state.fresh.set(c.id, { ...c, activity: -i });
  });
  state.activity = 0;
  renderSidebar();
}

export async function loadGlobal() {
  const res = await state.client.get('/v1/messages/get', { chat: 0 });
  const fresh = new Map(res.messages.map((m) => [m.id, m]));
  // Keep older pages that were loaded before, drop nothing newer than them.
  for (const [id, m] of state.global.messages) if (!fresh.has(id)) fresh.set(id, m);
  state.global.messages = fresh;
  if (!state.global.loaded) state.global.hasMore = res.messages.length >= PAGE_SIZE;
  state.global.loaded = true;
  if (state.open && state.open.kind === 'global') {
    state.open.messages = state.global.messages;
    state.open.hasMore = state.global.hasMore;
    state.open.loading = false;
    renderChat();
  }
  renderSidebar();
}

export function removeConversation(id) {
  state.joined.delete(id);
  state.fresh.delete(id);
  if (isOpen(id)) {
    // The server dropped the viewing with the conversation: no stopView.
    if (state.open.kind === 'viewer') state.open = null;
    closeChat();
  }
  if (state.info && state.info.id === id) closeInfo();
  renderSidebar();
}
