// Boot: decide who the user is (VK launch parameters, a remembered dev
// identity, or the dev sign-in form) and start the app, or explain why not.

import { ApiError, devSignIn, devSignInAvailable } from './api.js';
import { getVkProfile } from './bridge.js';
import { messageFor } from './errors.js';
import { h } from './dom.js';
import { DEV_IDENTITY_KEY } from './state.js';
import { showScreen, messageScreen, logoSvg } from './ui.js';
import { startApp } from './shell.js';

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
        else error.textContent = messageFor(err);
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

export async function boot() {
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
