// The client's one shared state and the constants around it. Every module
// reads and changes `state` directly; `ui` holds the shell's live elements so
// the renderers can find them. This module imports nothing, so it is always
// evaluated first.

export const DEV_IDENTITY_KEY = 'chat.devIdentity';
export const SENT_IDS_KEY = 'chat.sentGlobalIds';
export const PAGE_SIZE = 100;
export const VIEW_PAGE_SIZE = 50; // conversations/view returns the newest 50
export const MEMBERS = ['участник', 'участника', 'участников'];
export const VIEWERS = ['зритель', 'зрителя', 'зрителей'];

export const state = {
  client: null,
  devMode: false,
  me: { id: null, name: '', avatar: '' },
  online: false,
  tab: 'joined',
  joined: new Map(), // id -> {id, name, members, unreadCount, message, senderAvatar, viewers, creator_id, activity}
  fresh: new Map(), // id -> {id, name, members, viewers, creator_id, activity}
  activity: 0,
  global: { messages: new Map(), unread: 0, loaded: false, hasMore: false },
  // {kind: 'global'|'member'|'viewer', id, messages: Map, hasMore, loading, token,
  //  events: joins/leaves seen live, unread: {count, lastId} when it opened with unread}
  open: null,
  info: null, // {id, data, loading}
  pendingCreates: new Map(), // name -> [new_conversation events seen meanwhile]
  sentGlobalIds: new Set(),
  readTimers: new Map(),
  pendingJoins: new Set(),
  drafts: new Map(), // 'global' | 'member:<id>' -> unsent text
  names: new Map(), // user id -> last name seen (a leave event carries only the id)
};

export const ui = {};

let openToken = 0;

/** A new token for the chat being opened: a late answer for an older one is dropped. */
export function nextOpenToken() {
  openToken += 1;
  return openToken;
}

export function entryFor(id) {
  return state.joined.get(id) || state.fresh.get(id) || null;
}

export function isOpen(id) {
  return Boolean(state.open && state.open.kind !== 'global' && state.open.id === id);
}
