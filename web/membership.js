// What the user does to conversations: create, join, leave, delete.

import { ApiError } from './api.js';
import { h } from './dom.js';
import { messageFor } from './errors.js';
import { PAGE_SIZE, state, entryFor, isOpen, nextOpenToken } from './state.js';
import { toast, reportError, modal, confirmDialog } from './ui.js';
import { renderSidebar } from './sidebar.js';
import { moveToJoined, moveToNew, addFresh, loadLists, removeConversation } from './lists.js';
import { setOpen, closeChat, openConversation, handleOpenError, markRead, renderChat, focusComposer } from './conversation.js';
import { loadInfo } from './info.js';
import { addServiceLine } from './messages.js';

export async function createConversationDialog() {
  const input = h('input', {
    class: 'input', testid: 'create-name-input', maxlength: 50, placeholder: 'Например, «Любители котиков»', autocomplete: 'off',
  });
  const id = await modal({
    testid: 'create-dialog',
    title: 'Новая беседа',
    body: h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'Название (3–50 символов)'), input),
    okLabel: 'Создать',
    onOk: async (errorBox) => {
      const name = input.value.trim();
      if (name.length < 3 || name.length > 50) {
        errorBox.textContent = 'Название должно быть от 3 до 50 символов';
        return false;
      }
      try {
        return await createConversation(name);
      } catch (err) {
        errorBox.textContent = err instanceof ApiError ? messageFor(err) : String(err);
        return false;
      }
    },
  });
  if (id) openConversation(id);
}

async function createConversation(name) {
  const seen = [];
  state.pendingCreates.set(name, seen);
  try {
    const res = await state.client.post('/v1/conversations/new', { name });
    const id = res.conversation_id;
    moveToJoined(id, {
      name, members: 1, creator_id: state.me.id, unreadCount: 0, message: 'Создана беседа.', senderAvatar: state.me.avatar || '',
      activity: ++state.activity,
    });
    // Someone else's conversation with the same name announced meanwhile.
    for (const event of seen) if (event.conversation_id !== id) addFresh(event);
    renderSidebar();
    return id;
  } finally {
    state.pendingCreates.delete(name);
  }
}

export async function joinConversation(id) {
  if (state.pendingJoins.has(id)) return;
  state.pendingJoins.add(id);
  try {
    const res = await state.client.get(`/v1/conversations/join/${id}`);
    moveToJoined(id, { unreadCount: 0 });
    const last = res.messages[res.messages.length - 1];
    const entry = state.joined.get(id);
    if (entry && last) Object.assign(entry, { message: last.message, senderAvatar: last.avatar });
    state.tab = 'joined';
    if (state.open && state.open.kind === 'member' && state.open.id === id) {
      for (const m of res.messages) state.open.messages.set(m.id, m);
      renderChat();
      renderSidebar();
    } else {
      const open = {
        kind: 'member', id, messages: new Map(res.messages.map((m) => [m.id, m])),
        hasMore: res.messages.length >= PAGE_SIZE, loading: false, token: nextOpenToken(),
      };
      // Keep what arrived live while viewing; the server ended that viewing.
      if (state.open && state.open.kind === 'viewer' && state.open.id === id) {
        for (const [mid, m] of state.open.messages) if (!open.messages.has(mid)) open.messages.set(mid, m);
        open.events = state.open.events;
        state.open = null;
      }
      addServiceLine(open, 'joined', state.me.id, state.me.name);
      setOpen(open);
      focusComposer();
    }
    if (state.info && state.info.id === id) loadInfo(id);
    markRead(id, true);
  } catch (err) {
    if (err instanceof ApiError && err.status === 409 && err.code === 2) {
      await loadLists().catch(() => {});
      openConversation(id);
      return;
    }
    if (err instanceof ApiError && err.status === 404) handleOpenError(err, id);
    else reportError(err);
  } finally {
    state.pendingJoins.delete(id);
  }
}

export async function leaveConversation(id) {
  const entry = entryFor(id);
  const ok = await confirmDialog('Покинуть беседу?', `Вы выйдете из беседы «${entry ? entry.name : id}». Вернуться можно в любой момент, если в ней останутся участники.`, 'Покинуть');
  if (!ok) return;
  try {
    await state.client.get(`/v1/conversations/leave/${id}`);
    moveToNew(id);
    if (isOpen(id)) closeChat();
    renderSidebar();
  } catch (err) {
    reportError(err);
  }
}

export async function deleteConversation(id) {
  const entry = entryFor(id);
  const ok = await confirmDialog('Удалить беседу?', `Беседа «${entry ? entry.name : id}» и все её сообщения будут удалены для всех участников.`, 'Удалить');
  if (!ok) return;
  try {
    await state.client.del(`/v1/conversations/delete/${id}`);
    removeConversation(id);
    toast('Беседа удалена', 'info');
  } catch (err) {
    reportError(err);
  }
}
