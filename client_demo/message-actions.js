// The menu on a message ("Message actions"), with Recall for now, and the recall itself.
// The menu follows the WAI-ARIA menu button pattern: Enter, Space or ArrowDown opens it
// with the focus on the first item (ArrowUp: the last), the arrows, Home and End move,
// Escape closes it and gives the focus back to the button, Tab or a click elsewhere closes
// it. Recalling asks first, saying plainly what cannot be taken back (a normal SMS already
// on the patient's phone), then POSTs /messages/<id>/recall and applies the answer at
// once; everyone else gets the `recall` event live (sync.js).

import { el } from './dom.js';

const SENT = new Set(['sent', 'delivered']);

/**
 * Whether the signed-in user may recall `ev`: their own message, or, for an admin, a
 * message of their organisation's people (members, bots, patients: not an outside
 * contact's) in one of its conversations. The server decides in the end (403).
 */
export function canRecall(state, rec, ev) {
  if (!state.me || ev.kind !== 'message' || ev.recalled || ev.expired || !ev.id) return false;
  const sender = ev.sender || {};
  if (sender.id && sender.id === state.me.id) return true;
  return state.me.role === 'admin' && Boolean(state.org) && rec.data.org_id === state.org.id
    && sender.kind !== 'external';
}

/**
 * What a normal SMS (the text itself) already did for this message: 'delivered' when the
 * text is on the patient's phone (or handed to the carrier), 'queued' when it is about to
 * go, else null. A delivery's `mode` says what was sent (a secure SMS carries only a link,
 * which the recall revokes); without it, the conversation's channel is the best guess.
 */
export function plainSmsState(rec, ev) {
  if (rec.data.kind !== 'patient') return null;
  const sms = (Array.isArray(ev.deliveries) ? ev.deliveries : []).filter((d) => (
    d.mode ? d.mode === 'sms' : d.channel === 'sms' && rec.data.channel === 'sms'));
  if (sms.some((d) => SENT.has(d.status))) return 'delivered';
  if (sms.some((d) => d.status === 'queued')) return 'queued';
  return null;
}

export function recallQuestion(rec, ev) {
  const sms = plainSmsState(rec, ev);
  if (sms === 'delivered') {
    return 'Recall this message?\n\nThe text message already delivered to the patient’s phone '
      + 'cannot be unsent: only the copy in BloomText is recalled.';
  }
  if (sms === 'queued') {
    return 'Recall this message?\n\nIts text message to the patient’s phone is about to be sent: '
      + 'if it has already left, it cannot be unsent; only the copy in BloomText is recalled.';
  }
  return 'Recall this message?\n\nEveryone in the conversation sees “Message recalled” instead, '
    + 'and its files can no longer be downloaded.';
}

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {object} state see state.js
 * @param {ReturnType<import('./sync.js').createSync>} sync
 * @param {{ toast: (m: string) => void, afterRecall: () => void }} ctx
 */
export function createMessageActions(api, state, sync, ctx) {
  let open = null; // {eventId, button, menu} of the menu shown, if any

  function items(menu) {
    return Array.from(menu.querySelectorAll('[role="menuitem"]'));
  }

  function close({ focusButton = false } = {}) {
    if (!open) return;
    const { button, menu } = open;
    open = null;
    menu.hidden = true;
    button.setAttribute('aria-expanded', 'false');
    if (focusButton && button.isConnected) button.focus();
  }

  function show(eventId, button, menu, index = 0) {
    if (open && open.menu !== menu) close();
    open = { eventId, button, menu };
    menu.hidden = false;
    button.setAttribute('aria-expanded', 'true');
    const all = items(menu);
    if (all.length) all[(index + all.length) % all.length].focus();
  }

  function onMenuKey(event, menu) {
    const all = items(menu);
    const at = all.indexOf(document.activeElement);
    const move = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: all.length - 1 }[event.key];
    if (move !== undefined) {
      event.preventDefault();
      all[(move + all.length) % all.length].focus();
    } else if (event.key === 'Escape') {
      event.preventDefault();
      close({ focusButton: true });
    } else if (event.key === 'Tab') {
      close();
    }
  }

  // A click or tap anywhere else closes the menu.
  document.addEventListener('pointerdown', (event) => {
    if (open && !open.menu.contains(event.target) && !open.button.contains(event.target)) close();
  });

  // The message's menu button as it is now (the message may have been rebuilt meanwhile).
  function focusButton(eventId) {
    const id = CSS.escape(eventId);
    document.querySelector(`[data-event-id="${id}"] [data-testid="message-menu"]`)?.focus();
  }

  async function recall(rec, ev) {
    if (!window.confirm(recallQuestion(rec, ev))) {
      focusButton(ev.id);
      return;
    }
    const session = state.session;
    try {
      const event = await api.recall(ev.id);
      if (session !== state.session) return;
      sync.applyEvent(event); // the sender sees it at once; the socket's copy is a duplicate
      ctx.afterRecall();
    } catch (err) {
      if (session !== state.session) return;
      ctx.toast(`Could not recall the message: ${err.message}`);
      focusButton(ev.id);
    }
  }

  /** The menu button and its menu for one message; null when it offers nothing. */
  function menuFor(rec, ev) {
    const entries = [];
    if (canRecall(state, rec, ev)) entries.push(['Recall', 'message-recall', recall]);
    if (!entries.length) {
      if (open && open.eventId === ev.id) open = null; // e.g. recalled meanwhile
      return null;
    }
    const id = `message-menu-${ev.id}`;
    const menu = el(
      'ul',
      {
        id,
        class: 'message-menu',
        role: 'menu',
        'aria-label': 'Message actions',
        hidden: true,
        onkeydown: (event) => onMenuKey(event, menu),
      },
      entries.map(([label, testid, action]) =>
        el('li', { role: 'none' }, el('button', {
          type: 'button',
          role: 'menuitem',
          tabindex: '-1',
          'data-testid': testid,
          'data-focus-key': testid,
          onclick: () => {
            close();
            action(rec, ev);
          },
        }, label))),
    );
    const button = el('button', {
      type: 'button',
      class: 'message-menu-button',
      'aria-label': 'Message actions',
      'aria-haspopup': 'menu',
      'aria-expanded': 'false',
      'aria-controls': id,
      'data-testid': 'message-menu',
      'data-focus-key': 'message-menu',
      onclick: () => (open && open.menu === menu ? close() : show(ev.id, button, menu)),
      onkeydown: (event) => {
        if (event.key === 'ArrowDown' || event.key === 'ArrowUp') {
          event.preventDefault();
          show(ev.id, button, menu, event.key === 'ArrowDown' ? 0 : -1);
        } else if (event.key === 'Escape') {
          close();
        }
      },
    }, '⋯');
    if (open && open.eventId === ev.id) {
      // The message is being rebuilt (a receipt, a delivery) with its menu open: it stays
      // open; the focus moves over with it (conversation.js, data-focus-key).
      open = { eventId: ev.id, button, menu };
      menu.hidden = false;
      button.setAttribute('aria-expanded', 'true');
    }
    return el('div', { class: 'message-actions' }, button, menu);
  }

  return { menuFor, close };
}
