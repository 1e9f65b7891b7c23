// The look VK asks for: its appearance (light or dark, chosen in VK's own
// settings, which need not match the OS's) and, where VK reports them, the
// safe-area insets. Without VK, style.css follows the OS and env().

import { onBridgeEvent } from './bridge.js';

/** 'light' | 'dark' | null from a VKWebAppUpdateConfig payload (new clients send `appearance`, old ones only `scheme`). */
export function themeFromConfig(config) {
  if (config.appearance === 'light' || config.appearance === 'dark') return config.appearance;
  const scheme = String(config.scheme || '');
  if (scheme === 'space_gray' || /dark/.test(scheme)) return 'dark';
  if (scheme === 'bright_light' || /light/.test(scheme)) return 'light';
  return null;
}

function applyInsets(insets) {
  if (!insets || typeof insets !== 'object') return;
  const style = document.documentElement.style;
  for (const side of ['top', 'right', 'bottom', 'left']) {
    let value = Number(insets[side]);
    if (!Number.isFinite(value) || value < 0) continue;
    // A bottom inset this tall is the open keyboard, which the page already ends above.
    if (side === 'bottom' && value > 150) value = 0;
    style.setProperty(`--safe-${side}`, `${value}px`);
  }
}

export function followVkLook() {
  onBridgeEvent('VKWebAppUpdateConfig', (config) => {
    const theme = themeFromConfig(config);
    if (theme) document.documentElement.dataset.theme = theme;
    applyInsets(config.insets);
  });
  // Older clients send the insets in an event of their own.
  onBridgeEvent('VKWebAppUpdateInsets', (data) => applyInsets(data.insets));
}
