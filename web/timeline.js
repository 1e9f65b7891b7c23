// What the message list shows, in order: date separators, the "Новые
// сообщения" mark, service lines and messages with their grouping. Worked out
// from the whole list on every change, so a page loaded above or a message
// arriving below can never leave a duplicate separator or a stale group at the
// join. Pure: no DOM, no shared state (tests import it on its own).

import { dayKey, formatDay } from './dom.js';

/** The server's first message of every conversation, from its creator (storage/records.py). */
export const CONVERSATION_CREATED_TEXT = 'Создана беседа.';

/** A pause longer than this starts a new group even from the same sender. */
export const GROUP_GAP_SECONDS = 5 * 60;

export const UNREAD_LABEL = 'Новые сообщения';

/**
 * The rows, top to bottom:
 * - `{type: 'date', key, label}` before the first row of each local day;
 * - `{type: 'unread', key, label}` before the message `firstUnreadId`;
 * - `{type: 'service', key, kind: 'created'|'joined'|'left', userId, name, time}`;
 * - `{type: 'message', key, message, groupStart, groupEnd}`.
 *
 * `messages`: the loaded messages (any order). `events`: joins and leaves seen
 * live, `{kind, userId, name, time, afterId, seq}`, each shown after the
 * message `afterId` (the newest one known when it happened). `startReached`:
 * the oldest loaded message is the conversation's first, so if it is the
 * server's creation message it is shown as such (a member typing the same
 * words later stays a message). `senderKey(m)`: who a message is from for
 * grouping, `null` for "cannot tell" (the anonymous chat), never grouped.
 */
export function buildTimeline({
  messages,
  events = [],
  firstUnreadId = null,
  startReached = false,
  creatorId = null,
  senderKey = (m) => m.user_id ?? null,
  now = new Date(),
}) {
  const sorted = [...messages].sort((a, b) => a.id - b.id);
  const pending = [...events].sort((a, b) => a.afterId - b.afterId || a.seq - b.seq);
  const rows = [];
  let day = null;
  let groupTail = null; // the last message row, while the next one may join its group

  const enterDay = (time) => {
    if (!time) return; // no time known: it belongs to the day before it
    const key = dayKey(time);
    if (key === day) return;
    day = key;
    rows.push({ type: 'date', key: `date:${key}`, label: formatDay(time, now) });
    groupTail = null;
  };
  const pushService = (row) => {
    enterDay(row.time);
    rows.push(row);
    groupTail = null;
  };
  const flushEvents = (beforeId) => {
    while (pending.length && (beforeId === null || pending[0].afterId < beforeId)) {
      const e = pending.shift();
      pushService({ type: 'service', key: `event:${e.seq}`, kind: e.kind, userId: e.userId, name: e.name, time: e.time });
    }
  };

  sorted.forEach((m, index) => {
    flushEvents(m.id);
    if (index === 0 && startReached && isCreationMessage(m, creatorId)) {
      pushService({ type: 'service', key: `m:${m.id}`, kind: 'created', userId: m.user_id, name: m.name, time: m.time });
      return;
    }
    enterDay(m.time);
    if (m.id === firstUnreadId) {
      rows.push({ type: 'unread', key: 'unread', label: UNREAD_LABEL });
      groupTail = null;
    }
    const sender = senderKey(m);
    const joins = groupTail !== null && sender !== null && senderKey(groupTail.message) === sender
      && m.time - groupTail.message.time <= GROUP_GAP_SECONDS;
    if (joins) groupTail.groupEnd = false;
    const row = { type: 'message', key: `m:${m.id}`, message: m, groupStart: !joins, groupEnd: true };
    rows.push(row);
    groupTail = row;
  });
  flushEvents(null);
  return rows;
}

function isCreationMessage(m, creatorId) {
  return m.message === CONVERSATION_CREATED_TEXT && (creatorId == null || m.user_id === creatorId);
}

/** A service line's words; `mine`: it is about the user reading it. */
export function serviceText(kind, name, mine) {
  const who = name || 'Участник';
  switch (kind) {
    case 'created': return mine ? 'Вы создали беседу' : `${who} создал(а) беседу`;
    case 'joined': return mine ? 'Вы вступили в беседу' : `${who} вступил(а) в беседу`;
    case 'left': return mine ? 'Вы покинули беседу' : `${who} покинул(а) беседу`;
    default: return '';
  }
}

/**
 * The first unread message: `{firstId}` names it (it arrived while the page
 * was not seen); `{count, lastId}` (a chat opened with `count` unread) makes
 * it the `count`-th from the end of those that were there then, up to
 * `lastId`. Null while that one is on a page not loaded yet.
 */
export function firstUnreadId(messages, { firstId, count, lastId }, startReached) {
  if (firstId) return firstId;
  if (!count) return null;
  const ids = [...messages].map((m) => m.id).filter((id) => id <= lastId).sort((a, b) => a - b);
  if (ids.length >= count) return ids[ids.length - count];
  return startReached && ids.length ? ids[0] : null;
}
