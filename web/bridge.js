// A minimal VK Bridge: just enough to tell VK the app is ready and to ask for
// the user's name and photo. It speaks the same protocol as @vkontakte/vk-bridge
// (Android/iOS WebView interfaces, or postMessage to the parent frame on the
// web) so the app needs no build step and no third-party script.

const androidBridge = window.AndroidBridge;
const iosBridge = window.webkit && window.webkit.messageHandlers;
const isIos = Boolean(iosBridge && iosBridge.VKWebAppClose);
const isWeb = !androidBridge && !isIos;

let webFrameId;
let nextRequestId = 1;
const pending = new Map();
const listeners = new Map(); // event type -> [handler]

/** Call `handler(data)` on every event of `type` VK sends on its own (e.g. VKWebAppUpdateConfig). */
export function onBridgeEvent(type, handler) {
  if (!listeners.has(type)) listeners.set(type, []);
  listeners.get(type).push(handler);
}

function dispatch(type, data) {
  if (!data || typeof data !== 'object') return;
  if (!('request_id' in data)) {
    for (const handler of listeners.get(type) || []) handler(data);
    return;
  }
  const entry = pending.get(data.request_id);
  if (!entry) return;
  pending.delete(data.request_id);
  if (/Failed$/.test(type) || 'error_type' in data) entry.reject(data);
  else entry.resolve(data);
}

if (isWeb) {
  window.addEventListener('message', (event) => {
    const payload = event.data;
    if (!payload || typeof payload !== 'object') return;
    // Only VK's frame (the parent) speaks for VK; at the top level that is this window.
    if (event.source !== window.parent) return;
    if (payload.type === 'VKWebAppSettings') {
      webFrameId = payload.frameId;
      return;
    }
    dispatch(payload.type, payload.data);
  });
} else {
  window.addEventListener('VKWebAppEvent', (event) => {
    const detail = event.detail || {};
    dispatch(detail.type, detail.data);
  });
}

/** True when the page runs inside VK (a WebView or an iframe). */
export function isEmbedded() {
  return !isWeb || window.parent !== window;
}

/** Send a bridge method; resolves with its data or rejects (also on timeout). */
export function send(method, params = {}, timeoutMs = 2000) {
  return new Promise((resolve, reject) => {
    const requestId = nextRequestId++;
    const props = { ...params, request_id: requestId };
    const timer = setTimeout(() => {
      pending.delete(requestId);
      reject(new Error(`${method}: no answer from VK`));
    }, timeoutMs);
    pending.set(requestId, {
      resolve: (data) => { clearTimeout(timer); resolve(data); },
      reject: (data) => { clearTimeout(timer); reject(data); },
    });
    try {
      if (androidBridge && typeof androidBridge[method] === 'function') {
        androidBridge[method](JSON.stringify(props));
      } else if (isIos && iosBridge[method] && typeof iosBridge[method].postMessage === 'function') {
        iosBridge[method].postMessage(props);
      } else if (isWeb && window.parent !== window) {
        window.parent.postMessage(
          { handler: method, params: props, type: 'vk-connect', webFrameId, connectVersion: '2.15.0' },
          '*',
        );
      } else {
        throw new Error('VK Bridge is not available');
      }
    } catch (err) {
      clearTimeout(timer);
      pending.delete(requestId);
      reject(err);
    }
  });
}

/**
 * Initialise the bridge and return the user's profile as the chat server
 * wants it ({name, avatar}), or null when VK does not answer.
 */
export async function getVkProfile() {
  if (!isEmbedded()) return null;
  send('VKWebAppInit').catch(() => {});
  try {
    const user = await send('VKWebAppGetUserInfo');
    const name = [user.first_name, user.last_name].filter(Boolean).join(' ').trim();
    const avatar = user.photo_100 || user.photo_200 || '';
    return { name: name || null, avatar: avatar || null };
  } catch (err) {
    return null;
  }
}
