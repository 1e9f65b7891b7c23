// Talking to the chat server: the WebSocket (with reconnects and keep-alive
// pings) and the HTTP API (which waits for the socket, see docs/API.md §3).

const PING_INTERVAL_MS = 25_000;
const REQUEST_TIMEOUT_MS = 15_000;
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 30_000;
// Hidden by VK (VKWebAppViewHide) for longer than this, the socket is closed;
// VKWebAppViewRestore resumes it (docs/API.md §3).
const HIDDEN_CLOSE_MS = 60_000;
// Close codes the server refuses a handshake with after the upgrade (docs/API.md §3).
const CLOSE_BUSY = 1013;
const CLOSE_TOO_MANY_SOCKETS = 1008;

/**
 * An error answer of the API: {response: false, error: {code, message}}.
 * `route` is the path asked: codes 1-4 mean something else in each route
 * (errors.js turns them into text; `message` is the server's English).
 */
export class ApiError extends Error {
  constructor(status, code, message, param, route) {
    super(message || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.param = param;
    this.route = route;
  }
}

async function readJson(res) {
  const text = await res.text();
  try {
    return JSON.parse(text);
  } catch (err) {
    return null;
  }
}

function toApiError(res, body, route) {
  if (body && body.error) {
    return new ApiError(res.status, body.error.code, body.error.message, body.error.param, route);
  }
  return new ApiError(res.status, res.status, `Сервер ответил ${res.status}`, undefined, route);
}

/** POST /v1/dev/signin without any credentials (development sign-in). */
export async function devSignIn(userId, name) {
  let res;
  try {
    res = await fetch('/v1/dev/signin', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user_id: userId, name }),
    });
  } catch (err) {
    throw new ApiError(0, 0, 'Нет связи с сервером', undefined, '/v1/dev/signin');
  }
  const body = await readJson(res);
  if (!res.ok || !body || body.response !== true) throw toApiError(res, body, '/v1/dev/signin');
  return body.launch_params;
}

/**
 * Whether the server offers the development sign-in: 'yes', 'no', or
 * 'unreachable' when the server does not answer at all. Asked of
 * GET /v1/features, which always answers 200: a page load logs no failed request.
 */
export async function devSignInAvailable() {
  try {
    const res = await fetch('/v1/features', { cache: 'no-store' });
    const body = await readJson(res);
    if (!res.ok || !body || body.response !== true) return 'unreachable';
    return body.dev_signin === true ? 'yes' : 'no';
  } catch (err) {
    return 'unreachable';
  }
}

/**
 * One user's connection to the server.
 *
 * Emits (via `on(name, fn)`): `connected` ({socket_id, user_id, resumed}; also on a
 * `resync` frame, with resumed: false, so the app refetches),
 * `disconnected`, `event` ({event, data}) for every server event,
 * `authFailed` (the ApiError) when the server refuses the launch parameters,
 * and `refused` (the close reason) when the user holds too many sockets.
 */
export class ChatClient {
  constructor({ launchParams, profile }) {
    this.launchParams = launchParams;
    this.profile = profile || {};
    this.socketId = null;
    this.userId = null;
    this.position = null; // of the last event processed (docs/API.md §3, resume)
    this.ws = null;
    this.attempts = 0;
    this.everConnected = false;
    this.stopped = false;
    this.listeners = new Map();
    this.pingTimer = null;
    this.reconnectTimer = null;
    this.hideTimer = null;
    this.suspended = false; // closed while VK hid the app; `shown` resumes
    this._newReadyPromise();
    window.addEventListener('online', () => this.reconnectNow());
  }

  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, []);
    this.listeners.get(name).push(fn);
  }

  _emit(name, payload) {
    for (const fn of this.listeners.get(name) || []) {
      try {
        fn(payload);
      } catch (err) {
        console.error(err);
      }
    }
  }

  _newReadyPromise() {
    this.ready = new Promise((resolve) => { this._resolveReady = resolve; });
  }

  get connected() {
    return this.socketId !== null;
  }

  _socketUrl() {
    const params = new URLSearchParams(this.launchParams);
    if (this.profile.name && !params.has('name')) params.set('name', this.profile.name);
    if (this.profile.avatar && !params.has('avatar')) params.set('avatar', this.profile.avatar);
    // Reconnecting: ask for what was missed since the last event processed.
    if (this.position) params.set('resume', this.position);
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    return `${scheme}://${location.host}/v1/ws?${params.toString()}`;
  }

  start() {
    this.stopped = false;
    this._connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.pingTimer);
    if (this.ws) this.ws.close(1000);
  }

  /** VK hid the app: keep the socket a minute (a glance at another app), then close it until `shown`. */
  hidden() {
    clearTimeout(this.hideTimer);
    this.hideTimer = setTimeout(() => {
      this.suspended = true;
      this.stop();
    }, HIDDEN_CLOSE_MS);
  }

  /** VK shows the app again: a socket closed meanwhile resumes where it left off. */
  shown() {
    clearTimeout(this.hideTimer);
    if (!this.suspended) return;
    this.suspended = false;
    this.attempts = 0;
    this.start();
  }

  reconnectNow() {
    if (this.stopped || (this.ws && this.ws.readyState <= WebSocket.OPEN)) return;
    clearTimeout(this.reconnectTimer);
    this._connect();
  }

  _connect() {
    clearTimeout(this.reconnectTimer);
    let ws;
    try {
      ws = new WebSocket(this._socketUrl());
    } catch (err) {
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.addEventListener('open', () => {
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ event: 'ping' }));
      }, PING_INTERVAL_MS);
    });
    ws.addEventListener('message', (msg) => {
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch (err) {
        return;
      }
      if (!frame || typeof frame.event !== 'string') return;
      if (frame.event === 'pong') return;
      if (frame.event === 'connected' || frame.event === 'resumed' || frame.event === 'resume_failed') {
        // A new socket either way; "resumed" means the missed events follow,
        // in order and complete, so nothing needs to be fetched again.
        this.socketId = frame.data.socket_id;
        this.userId = frame.data.user_id;
        this.position = frame.pos || null;
        this.attempts = 0;
        this.everConnected = true;
        this._resolveReady();
        this._emit('connected', { ...frame.data, resumed: frame.event === 'resumed' });
        return;
      }
      if (frame.event === 'resync') {
        // The server lost its event history (docs/API.md §3): the socket stays
        // open, but what the app shows may be stale. Refetch as after a failed
        // resume; later events follow on this socket.
        if (frame.pos) this.position = frame.pos;
        this._emit('connected', { socket_id: this.socketId, user_id: this.userId, resumed: false });
        return;
      }
      this._emit('event', frame);
      if (frame.pos) this.position = frame.pos; // processed: a resume starts after it
    });
    ws.addEventListener('close', (event) => {
      if (this.ws !== ws) return;
      clearInterval(this.pingTimer);
      const wasConnected = this.socketId !== null;
      this.socketId = null;
      this.ws = null;
      if (wasConnected) {
        this._newReadyPromise();
        this._emit('disconnected');
      }
      if (this.stopped) return;
      if (event.code === CLOSE_TOO_MANY_SOCKETS) {
        // The user holds as many sockets as the server allows: retrying would only be refused again.
        this.stopped = true;
        this._emit('refused', event.reason);
        return;
      }
      const busy = event.code === CLOSE_BUSY && /retry after (\d+) s/.exec(event.reason || '');
      if (busy) {
        // Refused while the server is swamped: come back after its hint,
        // spread over as long again so refused clients do not return together.
        const hintMs = Number(busy[1]) * 1000;
        this._scheduleReconnect(hintMs + Math.random() * hintMs);
        return;
      }
      this._afterFailure(wasConnected);
    });
  }

  async _afterFailure(wasConnected) {
    // A handshake refused before we ever got in is most likely bad launch
    // parameters; the HTTP API tells 401 apart from "no socket" (428).
    if (!wasConnected && !this.everConnected && this.attempts <= 1) {
      const refused = await this._authRefused();
      if (refused) {
        this.stopped = true;
        this._emit('authFailed', refused);
        return;
      }
    }
    this._scheduleReconnect();
  }

  async _authRefused() {
    try {
      const path = '/v1/conversations/get';
      const res = await fetch(`${path}?mode=joined`, {
        headers: { Authorization: `VK ${this.launchParams}` },
        cache: 'no-store',
      });
      if (res.status !== 401) return null;
      return toApiError(res, await readJson(res), path);
    } catch (err) {
      return null;
    }
  }

  _scheduleReconnect(hintedMs) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempts);
    // Full jitter: a crowd of clients that lost the server at once comes back spread over the whole interval.
    const delay = hintedMs !== undefined ? hintedMs : Math.random() * base;
    this.attempts += 1;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this._connect(), delay);
  }

  /**
   * Call the HTTP API. Waits for an open socket first (the server answers
   * 428 otherwise), sends Authorization and X-Socket-Id, and resolves with the
   * JSON answer or throws ApiError.
   */
  async request(method, path, { query, body } = {}) {
    for (let attempt = 0; ; attempt += 1) {
      await this.ready;
      const socketId = this.socketId;
      let url = path;
      if (query) url += `?${new URLSearchParams(query).toString()}`;
      const headers = { Authorization: `VK ${this.launchParams}` };
      if (socketId) headers['X-Socket-Id'] = socketId;
      // Answers are per user and per moment: never from the HTTP cache.
      const init = { method, headers, cache: 'no-store' };
      if (body !== undefined) {
        headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(body);
      }
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
      init.signal = controller.signal;
      let res;
      try {
        res = await fetch(url, init);
      } catch (err) {
        throw new ApiError(0, 0, 'Нет связи с сервером', undefined, path);
      } finally {
        clearTimeout(timer);
      }
      const data = await readJson(res);
      if (res.ok && data && data.response === true) return data;
      // The socket we named went away in the meantime: wait for the next one.
      if (res.status === 428 && attempt < 2) {
        if (this.socketId === socketId && this.ws) {
          await new Promise((r) => setTimeout(r, 300 * (attempt + 1)));
        }
        continue;
      }
      throw toApiError(res, data, path);
    }
  }

  get(path, query) {
    return this.request('GET', path, { query });
  }

  post(path, body) {
    return this.request('POST', path, { body: body || {} });
  }

  del(path) {
    return this.request('DELETE', path);
  }
}
