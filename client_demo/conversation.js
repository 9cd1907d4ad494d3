// The open conversation: its header (people, notices, invitation links), the messages with
// their receipts and deliveries, what is still being sent, who is typing, and the composer;
// opening and closing it (with the `#c=<id>` address). app.js renders it with the rest.

import { createAttach } from './attach.js';
import { el, formatSize, saveBlob } from './dom.js';
import {
  EXTERNAL_NOTICE,
  hasOutsiders,
  inviteLinkNodes,
  markNode,
  outsideMark,
  peopleNodes,
} from './externals.js';
import { canRecall, createMessageActions } from './message-actions.js';
import { createPatientView } from './patient-view.js';
import { conversationTitle, formatTime, joinNames, nameOf, sortedEvents, viewer } from './state.js';
import { $, setText, show } from './ui.js';

const TYPING_SEND_EVERY_MS = 3000;

/** The conversation the address names, if any. */
export function conversationFromHash() {
  const m = /^#c=(.+)$/.exec(window.location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {object} state see state.js
 * @param {import('./realtime.js').Realtime} rt
 * @param {ReturnType<import('./sync.js').createSync>} sync
 * @param {{
 *   closePanes: () => void,
 *   render: () => void,
 *   scheduleRender: () => void,
 *   scheduleMarkRead: () => void,
 *   toast: (m: string) => void,
 * }} ctx
 */
export function createConversationView(api, state, rt, sync, ctx) {
  const { renderChannelNotice, patientViewed } = createPatientView(api, state, ctx);
  const actions = createMessageActions(api, state, sync, {
    toast: (m) => ctx.toast(m),
    afterRecall: () => $('composer').focus(),
  });
  const attach = createAttach(api, state, sync, {
    changed: () => {
      ctx.render();
      updateSendButton();
    },
    restoreText: (rec, text) => {
      // A refused file gives its text back to the box it came from, unless typed over.
      if (state.activeId === rec.id) {
        if (!$('composer').value.trim()) $('composer').value = text;
      } else if (!rec.draft.trim()) rec.draft = text;
      updateSendButton();
    },
    toast: (m) => ctx.toast(m),
  });

  function renderConversation() {
    const rec = state.activeId && state.convs.get(state.activeId);
    document.querySelector('.app').classList.toggle('has-active', Boolean(rec));
    show($('conv-placeholder'), !rec);
    show($('conv-pane'), Boolean(rec));
    attach.render(rec);
    updateSendButton();
    if (!rec) return;

    setText($('conv-title'), conversationTitle(state, rec));
    const who = viewer(state);
    const hasMessages = Boolean(rec.lastMessage) || (rec.data.last_seq || 0) > 0;
    $('conv-participants').replaceChildren(...peopleNodes(rec.data, { ...who, hasMessages }));
    show($('external-notice'), hasOutsiders(rec.data, who));
    renderChannelNotice(rec);
    const links = inviteLinkNodes(rec.data, rec.inviteLinks);
    const linkBox = $('invite-links');
    if (linkBox.dataset.conversationId !== rec.id || linkBox.childElementCount !== links.length) {
      linkBox.replaceChildren(...links); // rebuilt only when it changes: a selection survives
      linkBox.dataset.conversationId = rec.id;
    }
    show(linkBox, links.length > 0);
    show($('conv-loading'), rec.loading && !rec.loaded);

    const list = $('messages');
    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
    const switched = list.dataset.conversationId !== rec.id;
    if (switched) {
      messageNodes.clear();
      list.replaceChildren();
    }
    list.dataset.conversationId = rec.id;

    const entries = [];
    if (rec.loadError) {
      const text = `Could not load messages: ${rec.loadError}`;
      entries.push({ key: 'load-error', sig: text, build: () => el('li', { class: 'system error' }, text) });
    }
    const viewed = patientViewed(rec);
    for (const ev of sortedEvents(rec)) {
      const seen = ev.kind === 'message' && !ev.recalled ? seenBy(rec, ev) : [];
      const viewedBy = viewed && viewed.eventId === ev.id ? viewed.name : null;
      const menu = canRecall(state, rec, ev);
      entries.push({
        key: `e:${ev.id}`,
        sig: JSON.stringify([ev.seq, ev.recalled, ev.body, ev.attachments, ev.deliveries, seen,
          ev.sender && ev.sender.name, state.me && state.me.id, rec.data.org_name, viewedBy, menu]),
        build: () => renderEvent(rec, ev, seen, viewedBy),
      });
    }
    for (const item of state.outbox) {
      if (item.conversation_id !== rec.id) continue;
      entries.push({
        key: `p:${item.client_id}`,
        sig: JSON.stringify([item.status, item.error, rt.ready]),
        build: () => renderPending(item),
      });
    }
    if (!entries.length && rec.loaded) {
      entries.push({
        key: 'empty',
        sig: '',
        build: () => el('li', { class: 'system empty-conv', 'data-testid': 'no-messages' }, 'No messages yet.'),
      });
    }
    reconcile(list, entries);
    if (switched || nearBottom) list.scrollTop = list.scrollHeight;
    renderTyping();
  }

  // Keeps unchanged message nodes in place, so the live region announces only what is new.
  const messageNodes = new Map(); // key -> {sig, node}
  function reconcile(list, entries) {
    const wanted = [];
    const keys = new Set();
    for (const entry of entries) {
      let cached = messageNodes.get(entry.key);
      if (!cached || cached.sig !== entry.sig) {
        const node = entry.build();
        if (cached) {
          // A rebuilt message keeps the keyboard focus on its control (data-focus-key).
          const focused = document.activeElement;
          const key = cached.node.contains(focused) && focused.dataset.focusKey;
          cached.node.replaceWith(node);
          if (key) node.querySelector(`[data-focus-key="${CSS.escape(key)}"]`)?.focus();
        }
        cached = { sig: entry.sig, node };
        messageNodes.set(entry.key, cached);
      }
      wanted.push(cached.node);
      keys.add(entry.key);
    }
    for (const [key, cached] of messageNodes) {
      if (!keys.has(key)) {
        cached.node.remove();
        messageNodes.delete(key);
      }
    }
    let cursor = list.firstChild;
    for (const node of wanted) {
      if (node === cursor) cursor = cursor.nextSibling;
      else list.insertBefore(node, cursor);
    }
    while (cursor) {
      const next = cursor.nextSibling;
      cursor.remove();
      cursor = next;
    }
  }

  function seenBy(rec, ev) {
    if (!state.me || !ev.sender || ev.sender.id !== state.me.id) return [];
    const names = [];
    for (const [pid, seq] of rec.receipts) {
      if (pid !== state.me.id && seq >= ev.seq) names.push(nameOf(state, rec, pid));
    }
    return names;
  }

  function renderEvent(rec, ev, seenNames, viewedBy = null) {
    const senderId = ev.sender && ev.sender.id;
    const senderName = ev.sender ? ev.sender.name || nameOf(state, rec, senderId) : 'System';
    if (ev.kind !== 'message') {
      return el(
        'li',
        {
          class: 'system',
          'data-testid': 'system-event',
          'data-kind': ev.kind,
          'data-seq': ev.seq,
        },
        systemText(rec, ev, senderName),
        ev.created_at ? el('time', { datetime: ev.created_at }, ` · ${formatTime(ev.created_at)}`) : null,
      );
    }
    const mine = Boolean(state.me && senderId === state.me.id);
    const children = [
      el(
        'div',
        { class: 'meta' },
        el('span', { class: 'sender' }, mine ? 'You' : senderName),
        mine ? null : markNode(outsideMark(rec.data, ev.sender, viewer(state))),
        el('time', { datetime: ev.created_at || '', title: ev.created_at || '' }, formatTime(ev.created_at)),
      ),
    ];
    const menu = actions.menuFor(rec, ev);
    if (menu) children.push(menu);
    if (ev.recalled) {
      children.push(el('div', { class: 'body recalled', 'data-testid': 'message-body' }, 'Message recalled'));
    } else {
      if (ev.body) children.push(el('div', { class: 'body', 'data-testid': 'message-body' }, ev.body));
      const files = Array.isArray(ev.attachments) ? ev.attachments : [];
      if (files.length) {
        children.push(
          el(
            'ul',
            { class: 'attachments', 'aria-label': 'Attachments' },
            files.map((f) => {
              const label = `${f.name || 'file'}${f.size ? ` (${formatSize(f.size)})` : ''}`;
              return el(
                'li',
                {},
                el(
                  'button',
                  {
                    type: 'button',
                    class: 'link attachment',
                    'aria-label': `Download ${label}`,
                    'data-testid': 'attachment',
                    'data-file-id': f.id,
                    'data-focus-key': `file:${f.id}`,
                    onclick: (e) => downloadFile(f, e.currentTarget),
                  },
                  label,
                ),
              );
            }),
          ),
        );
      }
    }
    if (Array.isArray(ev.deliveries) && ev.deliveries.length) {
      const text = ev.deliveries
        .map((d) => `${d.channel === 'email' ? (d.fallback ? 'Email instead' : 'Email') : 'SMS'}: `
          + `${String(d.status || '').replace(/_/g, ' ')}${d.error ? ` (${d.error})` : ''}`)
        .join(' · ');
      children.push(el('div', { class: 'deliveries', 'data-testid': 'deliveries' }, text));
    }
    if (viewedBy) {
      children.push(el('div', { class: 'receipt patient-viewed', 'data-testid': 'patient-viewed' },
        `Viewed by ${viewedBy}`));
    }
    if (mine && !ev.recalled && seenNames.length) {
      children.push(
        el('div', { class: 'receipt', 'data-testid': 'receipt' }, `Seen by ${joinNames(seenNames)}`),
      );
    }
    return el(
      'li',
      {
        class: `message ${mine ? 'mine' : 'theirs'}${menu ? ' has-actions' : ''}`,
        'data-testid': 'message',
        'data-event-id': ev.id,
        'data-seq': ev.seq,
        'data-status': 'sent',
      },
      children,
    );
  }

  function systemText(rec, ev, senderName) {
    const subject = ev.participant || (Array.isArray(ev.participants) ? ev.participants[0] : null);
    const whom = subject ? subject.name || nameOf(state, rec, subject.id) : 'a participant';
    switch (ev.kind) {
      case 'recall':
        return `${senderName} recalled a message`;
      case 'participant_added':
        // Someone who accepted an invitation joins by themselves.
        if (ev.sender && ev.target_id && ev.sender.id === ev.target_id) return `${senderName} joined`;
        return `${senderName} added ${whom}`;
      case 'participant_removed':
        return `${senderName} removed ${whom}`;
      default:
        return `${senderName}: ${String(ev.kind).replace(/_/g, ' ')}`;
    }
  }

  function renderPending(item) {
    const statusText = {
      queued: rt.ready ? 'Sending…' : 'Waiting for connection…',
      sending: 'Sending…',
      failed: `Not sent: ${item.error || 'error'}`,
    }[item.status];
    return el(
      'li',
      {
        class: `message mine pending${item.status === 'failed' ? ' failed' : ''}`,
        'data-testid': 'message',
        'data-status': item.status === 'failed' ? 'failed' : 'pending',
        'data-client-id': item.client_id,
      },
      el('div', { class: 'meta' }, el('span', { class: 'sender' }, 'You')),
      el('div', { class: 'body', 'data-testid': 'message-body' }, item.body),
      el(
        'div',
        { class: 'pending-status', 'data-testid': 'pending' },
        statusText,
        item.status === 'failed'
          ? [
              ' ',
              el(
                'button',
                {
                  type: 'button',
                  class: 'link',
                  onclick: () => {
                    item.status = 'queued';
                    item.error = null;
                    sync.flushOutbox();
                  },
                },
                'Retry',
              ),
              ' ',
              el(
                'button',
                { type: 'button', class: 'link', onclick: () => sync.removeFromOutbox(item.client_id) },
                'Discard',
              ),
            ]
          : null,
      ),
    );
  }

  function renderTyping() {
    const node = $('typing');
    const users = state.activeId ? state.typing.get(state.activeId) : null;
    const rec = state.activeId && state.convs.get(state.activeId);
    if (!users || !users.size || !rec) {
      setText(node, '');
      show(node, false);
      return;
    }
    const names = Array.from(users.keys()).map((id) => nameOf(state, rec, id));
    setText(node, `${joinNames(names)} ${names.length === 1 ? 'is' : 'are'} typing…`);
    show(node, true);
  }

  // The API wants the Bearer header: fetch the bytes, then save them under the file's name.
  async function downloadFile(file, button) {
    if (button.getAttribute('aria-busy') === 'true') return;
    button.setAttribute('aria-busy', 'true');
    try {
      saveBlob(await api.fileBlob(file.id), file.name || 'file');
    } catch (err) {
      ctx.toast(`Could not download ${file.name || 'the file'}: ${err.status === 404
        ? 'it is no longer available (recalled or removed)' : err.message}`);
    } finally {
      button.removeAttribute('aria-busy');
    }
  }

  // -------------------------------------------------------------------------
  // Navigation

  async function openConversation(id, { focus = true } = {}) {
    const rec = state.convs.get(id);
    if (!rec) return;
    ctx.closePanes(); // the panes lie over the conversation
    const composer = $('composer');
    const previous = state.activeId && state.convs.get(state.activeId);
    if (previous && previous.id !== id) previous.draft = composer.value;
    if (state.activeId !== id) composer.value = rec.draft || '';
    state.activeId = id;
    updateSendButton();
    const hash = `#c=${encodeURIComponent(id)}`;
    if (window.location.hash !== hash) window.history.replaceState(null, '', hash);
    ctx.render();
    if (focus) composer.focus();
    if (!rec.loaded && !rec.loading) {
      rec.loading = true;
      rec.loadError = null;
      ctx.scheduleRender();
      try {
        await sync.loadHistory(rec);
      } catch (err) {
        rec.loadError = err.message || 'error';
      } finally {
        rec.loading = false;
      }
      ctx.scheduleRender();
    }
    ctx.scheduleMarkRead();
  }

  function closeConversation() {
    const rec = state.activeId && state.convs.get(state.activeId);
    if (rec) rec.draft = $('composer').value;
    state.activeId = null;
    window.history.replaceState(null, '', window.location.pathname);
    ctx.render();
  }

  // -------------------------------------------------------------------------
  // Composer

  function updateSendButton() {
    const rec = state.activeId && state.convs.get(state.activeId);
    $('send').disabled = !rec || attach.busy(rec)
      || ($('composer').value.trim() === '' && !attach.ready(rec));
    $('attach-file').disabled = !rec || attach.busy(rec);
  }

  function onComposerSubmit(event) {
    event.preventDefault();
    const composer = $('composer');
    const body = composer.value.trim();
    const rec = state.activeId && state.convs.get(state.activeId);
    if (!rec || attach.busy(rec)) return;
    if (attach.ready(rec)) {
      attach.send(rec, body); // the text goes with the file, as one message
    } else if (body) {
      sync.sendMessage(state.activeId, body);
    } else {
      return;
    }
    composer.value = '';
    state.lastTypingSent.delete(state.activeId);
    updateSendButton();
    composer.focus();
  }

  function maybeSendTyping() {
    const convId = state.activeId;
    if (!convId || !rt.ready) return;
    const now = Date.now();
    if (now - (state.lastTypingSent.get(convId) || 0) < TYPING_SEND_EVERY_MS) return;
    if (rt.send({ type: 'typing', conversation_id: convId })) state.lastTypingSent.set(convId, now);
  }

  setText($('external-notice'), EXTERNAL_NOTICE);
  $('composer-form').addEventListener('submit', onComposerSubmit);
  $('conv-back').addEventListener('click', closeConversation);
  const composer = $('composer');
  composer.addEventListener('input', () => {
    updateSendButton();
    if (composer.value.trim()) maybeSendTyping();
  });
  composer.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer-form').requestSubmit();
    }
  });
  window.addEventListener('hashchange', () => {
    const id = conversationFromHash();
    if (id && id !== state.activeId && state.convs.has(id)) openConversation(id);
  });

  return {
    render: renderConversation,
    renderTyping,
    open: openConversation,
    close: closeConversation,
    /** At login and logout: no message of the previous user stays in the page. */
    reset() {
      actions.close();
      attach.reset();
      messageNodes.clear();
      $('messages').replaceChildren();
      delete $('messages').dataset.conversationId;
      $('composer').value = '';
    },
  };
}
