// The signed-in app's frame: sidebar head, connection status and banner,
// the three panes; starts the socket client and wires its events.

import { ChatClient } from './api.js';
import { messageFor } from './errors.js';
import { avatar, h } from './dom.js';
import { DEV_IDENTITY_KEY, SENT_IDS_KEY, state, ui } from './state.js';
import { showScreen, messageScreen, icon } from './ui.js';
import { setTab, renderSidebar } from './sidebar.js';
import { createConversationDialog } from './membership.js';
import { openGlobal, renderChat, onPageActive } from './conversation.js';
import { onConnected, onServerEvent } from './events.js';
import { loadDrafts } from './composer.js';
import { loadOutbox } from './outbox.js';
import { watchAttention } from './attention.js';
import { onBridgeEvent } from './bridge.js';

export function startApp(launchParams, profile, devMode) {
  state.devMode = devMode;
  const params = new URLSearchParams(launchParams);
  state.me.id = Number(params.get('vk_user_id')) || null;
  state.me.name = profile.name || params.get('name') || (state.me.id ? `id${state.me.id}` : '');
  state.me.avatar = profile.avatar || '';
  try {
    for (const id of JSON.parse(sessionStorage.getItem(SENT_IDS_KEY) || '[]')) state.sentGlobalIds.add(id);
  } catch (err) { /* ignore */ }

  loadDrafts(state.me.id);
  buildShell();
  const client = new ChatClient({ launchParams, profile });
  state.client = client;
  loadOutbox(state.me.id);
  watchAttention(onPageActive);
  client.on('connected', onConnected);
  client.on('disconnected', () => { state.online = false; renderStatus(); });
  client.on('event', onServerEvent);
  client.on('authFailed', (err) => {
    messageScreen('auth-error', 'Не удалось войти', messageFor(err),
      state.devMode ? h('button', { class: 'btn btn-primary', onclick: signOut }, 'Войти заново') : null);
  });
  client.on('refused', () => {
    messageScreen('socket-refused', 'Слишком много открытых вкладок',
      'Чат открыт в слишком многих вкладках или на слишком многих устройствах. Закройте лишние и обновите страницу.', null);
  });
  onBridgeEvent('VKWebAppViewHide', () => client.hidden());
  onBridgeEvent('VKWebAppViewRestore', () => client.shown());
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

export function renderMe() {
  ui.meAvatar.replaceChildren(avatar({ url: state.me.avatar, name: state.me.name, seed: state.me.id, size: 40 }));
  ui.meName.textContent = state.me.name || '…';
  ui.meName.dataset.userId = state.me.id ?? '';
}

export function renderStatus() {
  ui.status.dataset.state = state.online ? 'online' : 'connecting';
  ui.status.textContent = state.online ? 'в сети' : 'подключение…';
  ui.banner.hidden = state.online || !state.client || !state.client.everConnected;
}

function signOut() {
  sessionStorage.removeItem(DEV_IDENTITY_KEY);
  sessionStorage.removeItem(SENT_IDS_KEY);
  if (state.client) state.client.stop();
  location.reload();
}
