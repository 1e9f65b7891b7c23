// The sidebar: the anonymous chat item, the two tabs and their lists.
// Rendering only; the lists' data changes in lists.js.

import { avatar, h } from './dom.js';
import { state, ui, isOpen } from './state.js';
import { icon, badge, countPill } from './ui.js';
import { joinConversation } from './membership.js';
import { openConversation, openViewer } from './conversation.js';
import { renderTitle } from './attention.js';
import { failedText } from './outbox.js';

export function setTab(tab) {
  state.tab = tab;
  renderSidebar();
}

function sortedByActivity(map) {
  return [...map.values()].sort((a, b) => b.activity - a.activity);
}

/**
 * Show `items` in `container`, reusing the element of every item whose
 * signature did not change (so a click is not lost to a re-render).
 */
function reconcile(container, items, cache, build, empty) {
  const nodes = [];
  const keys = new Set();
  for (const item of items) {
    const sig = JSON.stringify([item, isOpen(item.id)]);
    let cached = cache.get(item.id);
    if (!cached || cached.sig !== sig) {
      cached = { sig, node: build(item) };
      cache.set(item.id, cached);
    }
    keys.add(item.id);
    nodes.push(cached.node);
  }
  for (const key of [...cache.keys()]) if (!keys.has(key)) cache.delete(key);
  if (!nodes.length) nodes.push(empty());
  const current = container.children;
  const same = nodes.length === current.length && nodes.every((node, i) => current[i] === node);
  if (!same) container.replaceChildren(...nodes);
}

const itemCache = { joined: new Map(), fresh: new Map() };

export function renderSidebar() {
  if (!ui.joinedList) return;
  const last = lastGlobalMessage();
  const globalOpen = Boolean(state.open && state.open.kind === 'global');
  const globalFailed = failedText(0);
  const globalSig = JSON.stringify([last && last.message, state.global.unread, globalFailed]);
  ui.globalItem.classList.toggle('active', globalOpen);
  if (ui.globalSig !== globalSig) {
    ui.globalSig = globalSig;
    ui.globalItem.replaceChildren(
      h('span', { class: 'avatar conv-avatar global-avatar', style: '--size:44px' }, icon('mask')),
      h('span', { class: 'conv-main' },
        h('span', { class: 'conv-top' }, h('span', { class: 'conv-name' }, 'Анонимный чат')),
        globalFailed !== null
          ? unsentPreview(globalFailed)
          : h('span', { class: 'conv-preview', testid: 'global-preview' }, last ? last.message : 'Пишите без имени — отправитель скрыт')),
      badge(state.global.unread, 'global-unread'));
  }

  // A text that could not be sent shows in its chat's item, so it is not forgotten in a chat not open.
  const joined = sortedByActivity(state.joined).map((c) => ({ ...c, unsent: failedText(c.id) }));
  const fresh = sortedByActivity(state.fresh);
  const unreadTotal = joined.reduce((sum, c) => sum + (c.unreadCount || 0), 0);
  renderTitle(unreadTotal + state.global.unread);
  ui.tabJoined.replaceChildren('Мои беседы', badge(unreadTotal, 'tab-joined-badge'));
  ui.tabNew.replaceChildren('Новые', h('span', { class: 'tab-count', testid: 'tab-new-count', dataset: { count: fresh.length } }, String(fresh.length)));
  ui.tabJoined.classList.toggle('active', state.tab === 'joined');
  ui.tabNew.classList.toggle('active', state.tab === 'new');
  ui.tabJoined.setAttribute('aria-selected', String(state.tab === 'joined'));
  ui.tabNew.setAttribute('aria-selected', String(state.tab === 'new'));
  ui.joinedList.hidden = state.tab !== 'joined';
  ui.newList.hidden = state.tab !== 'new';

  reconcile(ui.joinedList, joined, itemCache.joined, joinedItem,
    () => h('div', { class: 'list-empty', testid: 'joined-empty' }, 'Вы пока не состоите ни в одной беседе. Создайте свою или вступите в новую.'));
  reconcile(ui.newList, fresh, itemCache.fresh, freshItem,
    () => h('div', { class: 'list-empty', testid: 'new-empty' }, 'Новых бесед нет.'));
}

function joinedItem(c) {
  return h('div', {
    class: `conv-item${isOpen(c.id) ? ' active' : ''}`, role: 'listitem', tabindex: 0,
    testid: 'conversation-item', dataset: { id: c.id, list: 'joined' },
    onclick: () => openConversation(c.id),
    onkeydown: (e) => { if (e.key === 'Enter') openConversation(c.id); },
  },
  avatar({ name: c.name, seed: `c${c.id}`, size: 44, extraClass: 'conv-avatar' }),
  h('span', { class: 'conv-main' },
    h('span', { class: 'conv-top' },
      h('span', { class: 'conv-name', testid: 'conversation-name' }, c.name),
      countPill('eye', c.viewers || 0, 'conversation-viewers')),
    c.unsent !== null
      ? unsentPreview(c.unsent)
      : h('span', { class: 'conv-preview', testid: 'conversation-preview' },
        c.senderAvatar ? avatar({ url: c.senderAvatar, name: '', size: 16, extraClass: 'mini' }) : null,
        h('span', { class: 'conv-preview-text' }, c.message || ''))),
  h('span', { class: 'conv-side' },
    countPill('users', c.members || 0, 'conversation-members'),
    badge(c.unreadCount || 0, 'unread-badge')));
}

function unsentPreview(text) {
  return h('span', { class: 'conv-preview conv-unsent', testid: 'conversation-unsent' },
    h('span', { class: 'conv-preview-text' }, `Не отправлено: ${text}`));
}

function freshItem(c) {
  return h('div', {
    class: `conv-item${isOpen(c.id) ? ' active' : ''}`, role: 'listitem', tabindex: 0,
    testid: 'conversation-item', dataset: { id: c.id, list: 'new' },
    onclick: () => openViewer(c.id),
    onkeydown: (e) => { if (e.key === 'Enter') openViewer(c.id); },
  },
  avatar({ name: c.name, seed: `c${c.id}`, size: 44, extraClass: 'conv-avatar' }),
  h('span', { class: 'conv-main' },
    h('span', { class: 'conv-top' }, h('span', { class: 'conv-name', testid: 'conversation-name' }, c.name)),
    h('span', { class: 'conv-meta' },
      countPill('users', c.members || 0, 'conversation-members'),
      countPill('eye', c.viewers || 0, 'conversation-viewers'))),
  h('button', {
    class: 'btn btn-small btn-primary', testid: 'conversation-join',
    onclick: (e) => { e.stopPropagation(); joinConversation(c.id); },
  }, 'Вступить'));
}

function lastGlobalMessage() {
  let last = null;
  for (const m of state.global.messages.values()) if (!last || m.id > last.id) last = m;
  return last;
}
