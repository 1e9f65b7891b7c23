// The chat web client: sign-in, then a sidebar with the conversation lists and
// a main pane with the open chat. Everything updates live from the socket
// events described in docs/API.md §3.
//
// The modules import each other's functions freely (some in a cycle, which
// ES modules allow): no module runs anything at load time except this entry,
// which starts only once every module is evaluated.

import { state } from './state.js';
import { messageScreen } from './ui.js';
import { boot } from './signin.js';
import { followVkLook } from './theme.js';

followVkLook();

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
