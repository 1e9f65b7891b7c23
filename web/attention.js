// Whether the user can see the page: messages count as read only then, and
// the page title carries the unread total for when they cannot.

const TITLE = 'Беседы';

// Inside VK's iframe the parent page takes the focus whenever the user
// touches VK's own interface around the app, which is still on screen:
// there only visibility counts.
const framed = window.parent !== window;
let focused = document.hasFocus();

/** Visible and, as a top-level page, focused. */
export function pageActive() {
  return document.visibilityState === 'visible' && (focused || framed);
}

/** Call `onActive` whenever the page becomes active again. */
export function watchAttention(onActive) {
  const check = () => { if (pageActive()) onActive(); };
  window.addEventListener('focus', () => { focused = true; check(); });
  window.addEventListener('blur', () => { focused = false; });
  document.addEventListener('visibilitychange', check);
}

export function renderTitle(unread) {
  const title = unread > 0 ? `(${unread > 99 ? '99+' : unread}) ${TITLE}` : TITLE;
  if (document.title !== title) document.title = title;
}
