// The "about the conversation" panel: members, viewers, creator.

import { avatar, countText, h } from './dom.js';
import { MEMBERS, VIEWERS, state, ui, entryFor } from './state.js';
import { reportError, icon } from './ui.js';
import { renderSidebar } from './sidebar.js';
import { renderChatHeader } from './conversation.js';
import { deleteConversation, joinConversation, leaveConversation } from './membership.js';

export function toggleInfo(id) {
  if (state.info && state.info.id === id) closeInfo();
  else loadInfo(id);
}

export function closeInfo() {
  state.info = null;
  if (ui.info) {
    ui.info.hidden = true;
    ui.info.replaceChildren();
  }
  document.body.classList.remove('info-open');
}

export async function loadInfo(id) {
  state.info = { id, data: state.info && state.info.id === id ? state.info.data : null };
  document.body.classList.add('info-open');
  renderInfo();
  try {
    const res = await state.client.get(`/v1/conversations/info/${id}`);
    if (!state.info || state.info.id !== id) return;
    state.info.data = res.conversation;
    const entry = entryFor(id);
    if (entry) {
      entry.members = res.conversation.members;
      entry.viewers = res.conversation.viewers;
      if (res.conversation.creator_id != null) entry.creator_id = res.conversation.creator_id;
      renderChatHeader();
      renderSidebar();
    }
    renderInfo();
  } catch (err) {
    if (state.info && state.info.id === id) closeInfo();
    reportError(err);
  }
}

export function renderInfo() {
  if (!state.info) { closeInfo(); return; }
  const data = state.info.data;
  ui.info.hidden = false;
  const head = h('header', { class: 'info-head' },
    h('h2', null, 'О беседе'),
    h('button', { class: 'icon-btn', title: 'Закрыть', 'aria-label': 'Закрыть', testid: 'info-close', onclick: closeInfo }, icon('close')));
  if (!data) {
    ui.info.replaceChildren(head, h('div', { class: 'messages-loading' }, h('div', { class: 'spinner' })));
    return;
  }
  const users = data.users || [];
  ui.info.replaceChildren(head,
    h('div', { class: 'info-hero' },
      avatar({ name: data.name, seed: `c${data.id}`, size: 72 }),
      h('div', { class: 'info-name', testid: 'info-name' }, data.name),
      h('div', { class: 'info-stats' },
        h('span', { testid: 'info-members-count', dataset: { count: data.members } }, countText(data.members, MEMBERS)),
        h('span', { testid: 'info-viewers-count', dataset: { count: data.viewers } }, countText(data.viewers, VIEWERS)))),
    h('h3', { class: 'info-section' }, 'Участники'),
    h('div', { class: 'info-members', testid: 'info-members' },
      users.map((u) => h('div', { class: 'info-member', testid: 'info-member', dataset: { userId: u.user_id } },
        avatar({ url: u.avatar, name: u.name, seed: u.user_id, size: 36 }),
        h('span', { class: 'info-member-name' }, u.name || `id${u.user_id}`),
        u.user_id === data.creator_id ? h('span', { class: 'tag', testid: 'info-creator' }, 'создатель') : null,
        u.user_id === state.me.id ? h('span', { class: 'tag tag-muted' }, 'вы') : null))),
    infoActions(data));
}

/** Join, leave, delete: here as well as in the chat header, which has no room for them on phones. */
function infoActions(data) {
  const id = data.id;
  const member = state.joined.has(id);
  return h('div', { class: 'info-actions' },
    member ? null : h('button', { class: 'btn btn-primary', testid: 'info-join', onclick: () => joinConversation(id) }, 'Вступить'),
    member ? h('button', { class: 'btn btn-danger-ghost', testid: 'info-leave', onclick: () => leaveConversation(id) }, icon('leave'), 'Покинуть беседу') : null,
    data.creator_id != null && data.creator_id === state.me.id
      ? h('button', { class: 'btn btn-danger-ghost', testid: 'info-delete', onclick: () => deleteConversation(id) }, icon('trash'), 'Удалить беседу')
      : null);
}
