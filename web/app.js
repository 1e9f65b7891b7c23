// The chat web client: sign-in, then a sidebar with the conversation lists and
// a main pane with the open chat. Everything updates live from the socket
// events described in docs/API.md §3.

import { ApiError, ChatClient, devSignIn, devSignInAvailable } from './api.js';
import { getVkProfile } from './bridge.js';
import { $, avatar, countText, formatTime, h } from './dom.js';

const DEV_IDENTITY_KEY = 'chat.devIdentity';
const SENT_IDS_KEY = 'chat.sentGlobalIds';
const PAGE_SIZE = 100;
const MEMBERS = ['участник', 'участника', 'участников'];
const VIEWERS = ['зритель', 'зрителя', 'зрителей'];

const root = document.getElementById('root');

const state = {
  client: null,
  devMode: false,
  me: { id: null, name: '', avatar: '' },
  online: false,
  tab: 'joined',
  joined: new Map(), // id -> {id, name, members, unreadCount, message, senderAvatar, viewers, creator_id, activity}
  fresh: new Map(), // id -> {id, name, members, viewers, creator_id, activity}
  activity: 0,
  global: { messages: new Map(), unread: 0, loaded: false, hasMore: false },
  open: null, // {kind: 'global'|'member'|'viewer', id, messages: Map, hasMore, loading, token}
  info: null, // {id, data, loading}
  pendingCreates: new Map(), // name -> [new_conversation events seen meanwhile]
  sentGlobalIds: new Set(),
  readTimers: new Map(),
  pendingJoins: new Set(),
  drafts: new Map(), // 'global' | 'member:<id>' -> unsent text
};

let openToken = 0;
const ui = {};

// ---------------------------------------------------------------- toasts

function toast(message, kind = 'error') {
  const box = document.getElementById('toasts');
  const el = h('div', { class: `toast toast-${kind}`, testid: 'toast', dataset: { kind }, role: 'status' }, message);
  box.append(el);
  setTimeout(() => {
    el.classList.add('leaving');
    setTimeout(() => el.remove(), 300);
  }, kind === 'error' ? 5000 : 3000);
}

function reportError(err) {
  if (err instanceof ApiError) toast(err.message, 'error');
  else {
    console.error(err);
    toast(String((err && err.message) || err), 'error');
  }
}

// ---------------------------------------------------------------- dialogs

function modal({ testid, title, body, okLabel, okClass = 'btn-primary', onOk }) {
  return new Promise((resolve) => {
    const close = (value) => {
      overlay.remove();
      document.removeEventListener('keydown', onKey);
      resolve(value);
    };
    const onKey = (e) => { if (e.key === 'Escape') close(null); };
    const error = h('div', { class: 'form-error', testid: 'dialog-error' });
    const submit = async (e) => {
      e.preventDefault();
      okBtn.disabled = true;
      try {
        const value = onOk ? await onOk(error) : true;
        if (value !== undefined && value !== false) close(value);
      } finally {
        okBtn.disabled = false;
      }
    };
    const okBtn = h('button', { type: 'submit', class: `btn ${okClass}`, testid: 'dialog-ok' }, okLabel);
    const form = h('form', { class: 'dialog', testid, onsubmit: submit },
      h('h2', { class: 'dialog-title' }, title),
      body,
      error,
      h('div', { class: 'dialog-actions' },
        h('button', { type: 'button', class: 'btn btn-ghost', testid: 'dialog-cancel', onclick: () => close(null) }, 'Отмена'),
        okBtn));
    const overlay = h('div', { class: 'overlay', onmousedown: (e) => { if (e.target === overlay) close(null); } }, form);
    document.addEventListener('keydown', onKey);
    document.body.append(overlay);
    const focusable = form.querySelector('input') || okBtn;
    focusable.focus();
  });
}

function confirmDialog(title, text, okLabel) {
  return modal({ testid: 'confirm-dialog', title, body: h('p', { class: 'dialog-text' }, text), okLabel, okClass: 'btn-danger' });
}

async function createConversationDialog() {
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
        errorBox.textContent = err.message;
        return false;
      }
    },
  });
  if (id) openConversation(id);
}

// ---------------------------------------------------------------- sign-in

function showScreen(el) {
  root.replaceChildren(el);
}

function messageScreen(testid, title, text, extra) {
  showScreen(h('div', { class: 'screen center', testid },
    h('div', { class: 'card card-narrow' },
      h('div', { class: 'logo' }, logoSvg()),
      h('h1', { class: 'card-title' }, title),
      h('p', { class: 'card-text' }, text),
      extra)));
}

function logoSvg() {
  const span = h('span', { class: 'logo-mark' });
  span.innerHTML = '<svg viewBox="0 0 32 32" width="40" height="40" aria-hidden="true"><rect width="32" height="32" rx="9" fill="currentColor"/><path d="M9 11h14v8H15l-4 3v-3H9z" fill="#fff"/></svg>';
  return span;
}

function readDevIdentity() {
  try {
    const value = JSON.parse(sessionStorage.getItem(DEV_IDENTITY_KEY) || 'null');
    if (value && Number.isInteger(value.user_id) && typeof value.name === 'string') return value;
  } catch (err) { /* ignore */ }
  return null;
}

function showSignIn() {
  const suggestedId = 100000 + Math.floor(Math.random() * 900000);
  const nameInput = h('input', { class: 'input', testid: 'signin-name', maxlength: 100, placeholder: 'Как вас зовут?', required: true, autocomplete: 'nickname' });
  const idInput = h('input', { class: 'input', testid: 'signin-user-id', type: 'number', min: 1, step: 1, value: String(suggestedId), required: true });
  const error = h('div', { class: 'form-error', testid: 'signin-error' });
  const button = h('button', { class: 'btn btn-primary btn-wide', type: 'submit', testid: 'signin-submit' }, 'Войти');
  const form = h('form', {
    class: 'card card-narrow', testid: 'signin-form',
    onsubmit: async (e) => {
      e.preventDefault();
      const name = nameInput.value.trim();
      const userId = Number(idInput.value);
      if (!name) { error.textContent = 'Введите имя'; return; }
      if (!Number.isInteger(userId) || userId <= 0) { error.textContent = 'ID должен быть положительным целым числом'; return; }
      button.disabled = true;
      error.textContent = '';
      try {
        const launchParams = await devSignIn(userId, name);
        sessionStorage.setItem(DEV_IDENTITY_KEY, JSON.stringify({ user_id: userId, name }));
        startApp(launchParams, { name, avatar: null }, true);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) showVkRequired();
        else error.textContent = err.message;
      } finally {
        button.disabled = false;
      }
    },
  },
  h('div', { class: 'logo' }, logoSvg()),
  h('h1', { class: 'card-title' }, 'Беседы'),
  h('p', { class: 'card-text' }, 'Режим разработки: сервер подпишет параметры запуска за VK. Каждая вкладка может войти своим пользователем.'),
  h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'Имя'), nameInput),
  h('label', { class: 'field' }, h('span', { class: 'field-label' }, 'ID пользователя VK'), idInput),
  error,
  button);
  showScreen(h('div', { class: 'screen center', testid: 'signin-screen' }, form));
  nameInput.focus();
}

function showVkRequired() {
  messageScreen('vk-required', 'Откройте приложение во ВКонтакте',
    'Это мини-приложение VK: оно работает, только когда открыто из ВКонтакте с параметрами запуска.');
}

async function boot() {
  const params = new URLSearchParams(location.search);
  if (params.has('vk_user_id') && params.has('sign')) {
    const profile = await getVkProfile();
    startApp(location.search.replace(/^\?/, ''), profile || {}, false);
    return;
  }
  const identity = readDevIdentity();
  if (identity) {
    try {
      const launchParams = await devSignIn(identity.user_id, identity.name);
      startApp(launchParams, { name: identity.name, avatar: null }, true);
      return;
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) { showVkRequired(); return; }
      // Keep the identity when the server is merely unreachable (a retry may work).
      if (err instanceof ApiError && err.status >= 400) sessionStorage.removeItem(DEV_IDENTITY_KEY);
    }
  }
  const available = await devSignInAvailable();
  if (available === 'yes') showSignIn();
  else if (available === 'no') showVkRequired();
  else {
    messageScreen('server-unreachable', 'Сервер недоступен', 'Не удалось связаться с сервером чата. Проверьте соединение и попробуйте ещё раз.',
      h('button', { class: 'btn btn-primary', testid: 'retry', onclick: () => location.reload() }, 'Повторить'));
  }
}

function signOut() {
  sessionStorage.removeItem(DEV_IDENTITY_KEY);
  sessionStorage.removeItem(SENT_IDS_KEY);
  if (state.client) state.client.stop();
  location.reload();
}

// ---------------------------------------------------------------- app shell

function startApp(launchParams, profile, devMode) {
  state.devMode = devMode;
  const params = new URLSearchParams(launchParams);
  state.me.id = Number(params.get('vk_user_id')) || null;
  state.me.name = profile.name || params.get('name') || (state.me.id ? `id${state.me.id}` : '');
  state.me.avatar = profile.avatar || '';
  try {
    for (const id of JSON.parse(sessionStorage.getItem(SENT_IDS_KEY) || '[]')) state.sentGlobalIds.add(id);
  } catch (err) { /* ignore */ }

  buildShell();
  const client = new ChatClient({ launchParams, profile });
  state.client = client;
  client.on('connected', onConnected);
  client.on('disconnected', () => { state.online = false; renderStatus(); });
  client.on('event', onServerEvent);
  client.on('authFailed', (message) => {
    messageScreen('auth-error', 'Не удалось войти', `Сервер не принял параметры запуска: ${message}`,
      state.devMode ? h('button', { class: 'btn btn-primary', onclick: signOut }, 'Войти заново') : null);
  });
  client.start();
}

function buildShell() {
  ui.meAvatar = h('span', { class: 'me-avatar' });
  ui.meName = h('div', { class: 'me-name', testid: 'me-name' });
  ui.status = h('div', { class: 'status', testid: 'connection-status', dataset: { state: 'connecting' } });
  ui.globalItem = h('button', { class: 'conv-item global-item', testid: 'global-chat-item', onclick: () => openGlobal() });
  ui.tabJoined = h('button', { class: 'tab', testid: 'tab-joined', role: 'tab', onclick: () => setTab('joined') });
  ui.tabNew = h('button', { class: 'tab', testid: 'tab-new', role: 'tab', onclick: () => setTab('new') });
  ui.joinedList = h('div', { class: 'conv-list', testid: 'joined-list', role: 'list' });
  ui.newList = h('div', { class: 'conv-list', testid: 'new-list', role: 'list' });
  ui.chat = h('main', { class: 'chat', testid: 'chat-pane' });
  ui.info = h('aside', { class: 'info-panel', testid: 'info-panel', hidden: true });
  ui.banner = h('div', { class: 'conn-banner', testid: 'connection-banner', hidden: true }, 'Нет соединения с сервером. Переподключаемся…');

  const sidebar = h('aside', { class: 'sidebar', testid: 'sidebar' },
    h('header', { class: 'sidebar-head' },
      ui.meAvatar,
      h('div', { class: 'me-text' }, ui.meName, ui.status),
      state.devMode ? h('button', { class: 'icon-btn', title: 'Выйти', 'aria-label': 'Выйти', testid: 'sign-out', onclick: signOut }, icon('logout')) : null),
    h('div', { class: 'sidebar-section' }, ui.globalItem),
    h('div', { class: 'tabs', role: 'tablist' }, ui.tabJoined, ui.tabNew),
    h('div', { class: 'lists' }, ui.joinedList, ui.newList),
    h('div', { class: 'sidebar-foot' },
      h('button', { class: 'btn btn-primary btn-wide', testid: 'create-conversation', onclick: () => createConversationDialog() },
        icon('plus'), 'Новая беседа')));

  showScreen(h('div', { class: 'app', testid: 'app' }, ui.banner, h('div', { class: 'app-body' }, sidebar, ui.chat, ui.info)));
  renderMe();
  renderStatus();
  renderSidebar();
  renderChat();
}

const ICONS = {
  plus: '<path d="M12 5v14M5 12h14"/>',
  logout: '<path d="M9 21H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h4M16 17l5-5-5-5M21 12H9"/>',
  send: '<path d="M4 12l16-8-6 16-3-7z"/>',
  back: '<path d="M15 18l-6-6 6-6"/>',
  info: '<circle cx="12" cy="12" r="9"/><path d="M12 11v5M12 8h.01"/>',
  eye: '<path d="M2 12s3.5-7 10-7 10 7 10 7-3.5 7-10 7S2 12 2 12z"/><circle cx="12" cy="12" r="3"/>',
  users: '<path d="M16 20v-2a4 4 0 0 0-4-4H6a4 4 0 0 0-4 4v2"/><circle cx="9" cy="7" r="4"/><path d="M22 20v-2a4 4 0 0 0-3-3.9M16 3.1a4 4 0 0 1 0 7.8"/>',
  trash: '<path d="M3 6h18M8 6V4h8v2M6 6l1 14h10l1-14"/>',
  leave: '<path d="M14 4h4a2 2 0 0 1 2 2v12a2 2 0 0 1-2 2h-4M3 12h11M7 8l-4 4 4 4"/>',
  close: '<path d="M6 6l12 12M18 6L6 18"/>',
  globe: '<circle cx="12" cy="12" r="9"/><path d="M3 12h18M12 3a14 14 0 0 1 0 18M12 3a14 14 0 0 0 0 18"/>',
  mask: '<path d="M3 8c3-2 15-2 18 0 0 6-3 10-9 10S3 14 3 8z"/><path d="M8 11h2M14 11h2"/>',
};

function icon(name) {
  const span = h('span', { class: 'icon', 'aria-hidden': 'true' });
  span.innerHTML = `<svg viewBox="0 0 24 24" width="20" height="20" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">${ICONS[name]}</svg>`;
  return span;
}

function renderMe() {
  ui.meAvatar.replaceChildren(avatar({ url: state.me.avatar, name: state.me.name, seed: state.me.id, size: 40 }));
  ui.meName.textContent = state.me.name || '…';
  ui.meName.dataset.userId = state.me.id ?? '';
}

function renderStatus() {
  ui.status.dataset.state = state.online ? 'online' : 'connecting';
  ui.status.textContent = state.online ? 'в сети' : 'подключение…';
  ui.banner.hidden = state.online || !state.client || !state.client.everConnected;
}

// ---------------------------------------------------------------- sidebar

function setTab(tab) {
  state.tab = tab;
  renderSidebar();
}

function sortedByActivity(map) {
  return [...map.values()].sort((a, b) => b.activity - a.activity);
}

function badge(count, testid) {
  return h('span', { class: `badge${count > 0 ? '' : ' zero'}`, testid, dataset: { count } }, count > 99 ? '99+' : String(count));
}

function countPill(kind, count, testid) {
  const forms = kind === 'eye' ? VIEWERS : MEMBERS;
  return h('span', {
    class: `pill${count > 0 ? '' : ' zero'}`, testid, dataset: { count }, title: countText(count, forms),
  }, icon(kind), String(count));
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

function renderSidebar() {
  if (!ui.joinedList) return;
  const last = lastGlobalMessage();
  const globalOpen = Boolean(state.open && state.open.kind === 'global');
  const globalSig = JSON.stringify([last && last.message, state.global.unread]);
  ui.globalItem.classList.toggle('active', globalOpen);
  if (ui.globalSig !== globalSig) {
    ui.globalSig = globalSig;
    ui.globalItem.replaceChildren(
      h('span', { class: 'avatar conv-avatar global-avatar', style: '--size:44px' }, icon('mask')),
      h('span', { class: 'conv-main' },
        h('span', { class: 'conv-top' }, h('span', { class: 'conv-name' }, 'Анонимный чат')),
        h('span', { class: 'conv-preview', testid: 'global-preview' }, last ? last.message : 'Пишите без имени — отправитель скрыт')),
      badge(state.global.unread, 'global-unread'));
  }

  const joined = sortedByActivity(state.joined);
  const fresh = sortedByActivity(state.fresh);
  const unreadTotal = joined.reduce((sum, c) => sum + (c.unreadCount || 0), 0);
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

function isOpen(id) {
  return Boolean(state.open && state.open.kind !== 'global' && state.open.id === id);
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
    h('span', { class: 'conv-preview', testid: 'conversation-preview' },
      c.senderAvatar ? avatar({ url: c.senderAvatar, name: '', size: 16, extraClass: 'mini' }) : null,
      h('span', { class: 'conv-preview-text' }, c.message || ''))),
  h('span', { class: 'conv-side' },
    countPill('users', c.members || 0, 'conversation-members'),
    badge(c.unreadCount || 0, 'unread-badge')));
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

// ---------------------------------------------------------------- lists

function entryFor(id) {
  return state.joined.get(id) || state.fresh.get(id) || null;
}

function moveToJoined(id, extra = {}) {
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

function moveToNew(id) {
  const entry = state.joined.get(id);
  if (!entry) return;
  state.joined.delete(id);
  state.fresh.set(id, {
    id, name: entry.name, members: entry.members, viewers: entry.viewers, creator_id: entry.creator_id, activity: ++state.activity,
  });
}

async function loadLists() {
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

async function loadGlobal() {
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

// ---------------------------------------------------------------- opening chats

function setOpen(open) {
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

function closeChat() {
  openToken += 1;
  setOpen(null);
}

function openGlobal() {
  const token = ++openToken;
  state.global.unread = 0;
  setOpen({ kind: 'global', id: 0, messages: state.global.messages, hasMore: state.global.hasMore, loading: !state.global.loaded, token });
  if (!state.global.loaded) loadGlobal().catch(reportError);
  focusComposer();
}

async function openConversation(id) {
  if (!state.joined.has(id)) { openViewer(id); return; }
  const token = ++openToken;
  const open = { kind: 'member', id, messages: new Map(), hasMore: false, loading: true, token };
  setOpen(open);
  focusComposer();
  await loadMemberMessages(open);
}

async function loadMemberMessages(open) {
  try {
    const res = await state.client.get('/v1/messages/get', { chat: open.id });
    if (state.open !== open) return;
    for (const m of res.messages) open.messages.set(m.id, m);
    open.hasMore = res.messages.length >= PAGE_SIZE;
    open.loading = false;
    renderChat();
    markRead(open.id, true);
  } catch (err) {
    if (state.open !== open) return;
    handleOpenError(err, open.id);
  }
}

async function openViewer(id) {
  if (state.joined.has(id)) { openConversation(id); return; }
  const token = ++openToken;
  const open = { kind: 'viewer', id, messages: new Map(), hasMore: false, loading: true, token };
  setOpen(open);
  await loadViewerMessages(open);
}

async function loadViewerMessages(open) {
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

function handleOpenError(err, id) {
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

async function loadEarlier() {
  const open = state.open;
  if (!open || open.kind === 'viewer') return;
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
  } catch (err) {
    reportError(err);
  }
}

function markRead(id, now = false) {
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

// ---------------------------------------------------------------- actions

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

async function joinConversation(id) {
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
        hasMore: res.messages.length >= PAGE_SIZE, loading: false, token: ++openToken,
      };
      // Keep what arrived live while viewing; the server ended that viewing.
      if (state.open && state.open.kind === 'viewer' && state.open.id === id) {
        for (const [mid, m] of state.open.messages) if (!open.messages.has(mid)) open.messages.set(mid, m);
        state.open = null;
      }
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

async function leaveConversation(id) {
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

async function deleteConversation(id) {
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

function removeConversation(id) {
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

// ---------------------------------------------------------------- chat pane

function renderChat() {
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

  ui.messageList = h('div', { class: 'messages', testid: 'message-list', role: 'log', 'aria-live': 'polite' });
  fillMessages();

  const parts = [ui.header, ui.messageList];
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

function renderChatHeader() {
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
    h('div', { class: 'chat-head-text' },
      h('div', { class: 'chat-title', testid: 'chat-title' }, title),
      h('div', { class: 'chat-sub' }, sub)),
    h('div', { class: 'chat-actions' }, actions));
}

function draftKey(open) {
  return open.kind === 'global' ? 'global' : `member:${open.id}`;
}

function buildComposer() {
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

function focusComposer() {
  if (window.matchMedia('(pointer: fine)').matches && ui.composerInput && ui.composerInput.isConnected) ui.composerInput.focus();
}

function isMine(m) {
  if (state.open && state.open.kind === 'global') return state.sentGlobalIds.has(m.id);
  return m.user_id != null && m.user_id === state.me.id;
}

function messageNode(m) {
  const mine = isMine(m);
  const anonymous = m.user_id == null;
  return h('div', {
    class: `msg${mine ? ' mine' : ''}${anonymous ? ' anon' : ''}`, testid: 'message',
    dataset: { id: m.id, mine: String(mine), userId: anonymous ? '' : m.user_id },
  },
  !mine && !anonymous ? avatar({ url: m.avatar, name: m.name, seed: m.user_id, size: 32, extraClass: 'msg-avatar' }) : null,
  h('div', { class: 'bubble' },
    !mine && !anonymous ? h('div', { class: 'msg-author', testid: 'message-author' }, m.name || `id${m.user_id}`) : null,
    h('div', { class: 'msg-text', testid: 'message-text' }, m.message),
    h('time', { class: 'msg-time', datetime: new Date(m.time * 1000).toISOString() }, formatTime(m.time))));
}

function fillMessages() {
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
}

function nearBottom() {
  const list = ui.messageList;
  return !list || list.scrollHeight - list.scrollTop - list.clientHeight < 120;
}

function scrollToBottom(force) {
  const list = ui.messageList;
  if (!list) return;
  if (force || nearBottom()) requestAnimationFrame(() => { list.scrollTop = list.scrollHeight; });
}

/** Put a message into the open chat's list in id order (replacing a copy). */
function upsertMessageNode(m, forceScroll = false) {
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
  if (stick) scrollToBottom(true);
}

// ---------------------------------------------------------------- info panel

function toggleInfo(id) {
  if (state.info && state.info.id === id) closeInfo();
  else loadInfo(id);
}

function closeInfo() {
  state.info = null;
  if (ui.info) {
    ui.info.hidden = true;
    ui.info.replaceChildren();
  }
  document.body.classList.remove('info-open');
}

async function loadInfo(id) {
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

function renderInfo() {
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
        u.user_id === state.me.id ? h('span', { class: 'tag tag-muted' }, 'вы') : null))));
}

// ---------------------------------------------------------------- events

async function onConnected(data) {
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

function onServerEvent({ event, data }) {
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
    const known = state.global.messages.has(msg.id);
    state.global.messages.set(msg.id, msg);
    if (state.open && state.open.kind === 'global') upsertMessageNode(msg);
    else if (!known && !state.sentGlobalIds.has(msg.id)) state.global.unread += 1;
    renderSidebar();
    return;
  }
  const entry = state.joined.get(id);
  const openHere = isOpen(id);
  if (entry) {
    entry.message = data.message;
    entry.senderAvatar = data.avatar;
    entry.activity = ++state.activity;
    if (openHere && state.open.kind === 'member') markRead(id);
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
  if (data.user_id === state.me.id) {
    if (!moveToJoined(id)) loadLists().catch(() => {});
    // Joined from another tab: the server ended this tab's viewing.
    if (state.open && state.open.kind === 'viewer' && state.open.id === id && !state.pendingJoins.has(id)) {
      const open = { kind: 'member', id, messages: state.open.messages, hasMore: false, loading: false, token: ++openToken };
      state.open = null;
      setOpen(open);
      loadMemberMessages(open);
    }
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

function addFresh(data) {
  const id = data.conversation_id;
  if (state.joined.has(id) || state.fresh.has(id)) return;
  state.fresh.set(id, { id, name: data.name, members: data.members ?? 1, viewers: 0, creator_id: null, activity: ++state.activity });
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

// ---------------------------------------------------------------- start

window.addEventListener('pagehide', () => {
  // Leaving the page closes the socket, which ends the viewing anyway.
  if (state.client) state.client.stop();
});
window.addEventListener('pageshow', (e) => {
  // Restored from the back/forward cache with a stopped client: start over.
  if (e.persisted) location.reload();
});

boot().catch((err) => {
  console.error(err);
  messageScreen('boot-error', 'Что-то пошло не так', String((err && err.message) || err));
});
