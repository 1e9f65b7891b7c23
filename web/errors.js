// The server's refusals in the interface's language. The API's own messages
// are English (docs/API.md §1) and are never shown: every error code of
// docs/API.md has a Russian text here, and an unknown one still reads as
// Russian, with its code for a bug report.

const NO_CONNECTION = 'Нет связи с сервером';

// The per-route failures, named as the server names them (server/errors.py).
const FAILURES = {
  ChatIdRequired: 'Не указан чат',
  NoSuchConversation: 'Этой беседы больше нет',
  NotAMember: 'Вы не участник этой беседы',
  NoRights: 'Это может только создатель беседы',
  AlreadyMember: 'Вы уже участник этой беседы',
  TooManyMembers: 'В беседе уже наибольшее число участников',
  DuplicateName: 'У вас уже есть беседа с таким названием',
  SocketRequired: 'Соединение с сервером ещё не установлено, попробуйте через несколько секунд',
};

// Codes 1-4 are numbered per route (docs/API.md §5): "no such conversation"
// is 1 in leave and 2 in messages/get.
export const ROUTE_FAILURES = {
  'messages/get': { 1: 'ChatIdRequired', 2: 'NoSuchConversation', 3: 'NotAMember', 4: 'SocketRequired' },
  'messages/send': { 1: 'NoSuchConversation', 2: 'NotAMember', 3: 'SocketRequired' },
  'conversations/get': { 1: 'SocketRequired' },
  'conversations/new': { 1: 'DuplicateName', 2: 'SocketRequired' },
  'conversations/join': { 1: 'NoSuchConversation', 2: 'AlreadyMember', 3: 'TooManyMembers', 4: 'SocketRequired' },
  'conversations/leave': { 1: 'NoSuchConversation', 2: 'NotAMember', 3: 'SocketRequired' },
  'conversations/delete': { 1: 'NoSuchConversation', 2: 'NoRights', 3: 'SocketRequired' },
  'conversations/read': { 1: 'NoSuchConversation', 2: 'NotAMember', 3: 'SocketRequired' },
  'conversations/view': { 1: 'NoSuchConversation', 2: 'AlreadyMember', 3: 'SocketRequired' },
  'conversations/stopView': { 1: 'NoSuchConversation', 2: 'AlreadyMember', 3: 'SocketRequired' },
  'conversations/info': { 1: 'NoSuchConversation', 2: 'SocketRequired' },
};

// What a route's failure means to the person who asked, where the general text says less.
const IN_ROUTE = {
  'messages/send': { NotAMember: 'Писать сюда могут только участники беседы' },
  'conversations/delete': { NoRights: 'Удалить беседу может только её создатель' },
};

// The generic codes, equal to the HTTP status (docs/API.md §1); 0 is the
// client's own: no answer at all.
const GENERIC = {
  0: NO_CONNECTION,
  400: 'Сервер не принял запрос: неверные данные',
  401: 'Сервер не принял параметры запуска VK: они неверны или устарели',
  403: 'Сервер не разрешает подключаться с этой страницы',
  404: 'Сервер не знает такого запроса',
  405: 'Сервер не принимает такой запрос',
  413: 'Слишком большой запрос',
  416: 'Сервер не принял запрос',
  429: 'Слишком много сообщений подряд, подождите немного',
  431: 'Слишком большой запрос',
  500: 'Ошибка на сервере, попробуйте ещё раз',
  503: 'Сервер временно недоступен, попробуйте ещё раз',
};

// Parameters a person can fix, by route and the names the API gives them.
const PARAMETERS = {
  'messages/send text': 'Сообщение должно быть от 1 до 1000 символов и не из одних пробелов',
  'conversations/new name': 'Название должно быть от 3 до 50 символов',
  'dev/signin name': 'Имя должно быть от 1 до 100 символов',
  'dev/signin user_id': 'ID должен быть положительным целым числом',
};

/** The route of an API path, as the tables above name it: '/v1/conversations/join/5?x' → 'conversations/join'. */
export function routeOf(path) {
  return String(path || '').split('?')[0].replace(/^\/v1\//, '').split('/').slice(0, 2).join('/');
}

/** The failure a route's per-route code stands for ('DuplicateName', ...), or null. */
export function failureOf({ route, code }) {
  const table = ROUTE_FAILURES[routeOf(route)];
  return (table && table[code]) || null;
}

/** The Russian text of an API error ({code, status, route, param}), or null when none is known. */
export function knownMessage(error) {
  if (!error) return null;
  const { code } = error;
  if (code >= 1 && code <= 9) {
    const failure = failureOf(error);
    if (!failure) return null;
    const special = IN_ROUTE[routeOf(error.route)];
    return (special && special[failure]) || FAILURES[failure];
  }
  const parameter = code === 400 && PARAMETERS[`${routeOf(error.route)} ${error.param}`];
  if (parameter) return parameter;
  return GENERIC[code] || null;
}

/** What to tell the person about an error: always Russian, never the server's English. */
export function messageFor(error) {
  const known = knownMessage(error);
  if (known) return known;
  const code = error && (error.code ?? error.status);
  return code ? `Что-то пошло не так (код ${code})` : 'Что-то пошло не так';
}
