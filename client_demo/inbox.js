// The inbox in the sidebar: the conversation list, the organisation switch (shown once a
// conversation of another organisation is there) and the switcher by team and number
// (shown when the caller's teams have phone numbers). app.js renders it with the rest.

import { el } from './dom.js';
import { inboxMarks, inviteeLabel, invitees, organisations, outsideMark } from './externals.js';
import { loadNumbers, numberLabel } from './patient-conv.js';
import {
  conversationTitle,
  joinNames,
  nameOf,
  participantsOf,
  unreadCount,
  upsertConversation,
  viewer,
} from './state.js';
import { $, setText, show } from './ui.js';

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {object} state see state.js
 * @param {{
 *   openConversation: (id: string) => void,
 *   scheduleRender: () => void,
 *   toast: (m: string) => void,
 * }} ctx
 */
export function createInbox(api, state, ctx) {
  function renderOrgSwitch() {
    const box = $('org-switch-box');
    const select = $('org-switch');
    const orgs = organisations(Array.from(state.convs.values(), (r) => r.data), state.org);
    const others = orgs.filter((o) => !o.own);
    if (state.orgFilter && !orgs.some((o) => o.id === state.orgFilter)) state.orgFilter = '';
    show(box, others.length > 0);
    if (!others.length) {
      state.orgFilter = '';
      if (select.options.length) select.replaceChildren();
      return;
    }
    const choices = [{ id: '', name: 'All organisations' }, ...orgs];
    const sig = JSON.stringify(choices.map((o) => [o.id, o.name]));
    if (select.dataset.sig !== sig) {
      select.replaceChildren(
        ...choices.map((o) => el('option', { value: o.id }, o.own ? `${o.name} (yours)` : o.name)),
      );
      select.dataset.sig = sig;
    }
    select.value = state.orgFilter;
  }

  // -------------------------------------------------------------------------
  // Inbox by team and number

  // The teams that own numbers, then each number; hidden without numbers (or without the plan).
  function inboxChoices() {
    const teams = new Map();
    for (const n of state.numbers) if (n.team_id) teams.set(n.team_id, n.team_name || 'Team');
    return [
      { value: '', label: 'All conversations' },
      { value: 'kind:internal', label: 'Internal' },
      ...Array.from(teams, ([id, name]) => ({ value: `team:${id}`, label: `Team: ${name}` }))
        .sort((a, b) => a.label.localeCompare(b.label)),
      ...state.numbers.map((n) => ({ value: `number:${n.id}`, label: numberLabel(n) })),
    ];
  }

  function renderInboxSwitch() {
    const box = $('inbox-switch-box');
    const select = $('inbox-switch');
    const has = state.numbers.length > 0;
    show(box, has);
    if (!has) {
      if (select.options.length) select.replaceChildren();
      delete select.dataset.sig;
      return;
    }
    const choices = inboxChoices();
    const sig = JSON.stringify(choices);
    if (select.dataset.sig !== sig) {
      select.replaceChildren(...choices.map((c) => el('option', { value: c.value }, c.label)));
      select.dataset.sig = sig;
    }
    select.value = state.inboxFilter;
  }

  function inboxQuery(filter) {
    const [kind, id] = filter.split(':');
    if (kind === 'kind') return { kind: id };
    if (kind === 'team') return { team_id: id };
    if (kind === 'number') return { phone_number_id: id };
    return {};
  }

  /** Whether a conversation belongs in the inbox as filtered (live ones included). */
  function inboxMatches(rec) {
    if (!state.inboxFilter) return true;
    if (state.inboxIds && state.inboxIds.has(rec.id)) return true;
    const [kind, id] = state.inboxFilter.split(':');
    const d = rec.data;
    if (kind === 'kind') return (d.kind || 'internal') === id;
    if (kind === 'number') return d.phone_number_id === id;
    if (kind === 'team') {
      return state.numbers.some((n) => n.team_id === id && n.id === d.phone_number_id);
    }
    return true;
  }

  async function setInboxFilter(filter) {
    const session = state.session;
    state.inboxFilter = filter;
    state.inboxIds = null;
    renderInbox();
    if (!filter) return;
    try {
      const convs = await api.listAll('/api/v1/conversations', inboxQuery(filter));
      if (session !== state.session || state.inboxFilter !== filter) return;
      for (const conv of convs) upsertConversation(state, conv, { fresh: false });
      state.inboxIds = new Set(convs.map((c) => c.id));
    } catch (err) {
      if (session !== state.session) return;
      if (err.status === 402) {
        state.numbers = [];
        state.inboxFilter = '';
      } else {
        ctx.toast(`Could not filter the inbox: ${err.message}`);
      }
    }
    ctx.scheduleRender();
  }

  async function loadInboxNumbers() {
    const session = state.session;
    if (!state.me || (state.me.kind && state.me.kind !== 'member')) return;
    const { numbers } = await loadNumbers(api); // 402 or any error: no switcher
    if (session !== state.session) return;
    state.numbers = numbers;
    if (state.inboxFilter && !inboxChoices().some((c) => c.value === state.inboxFilter)) {
      state.inboxFilter = '';
      state.inboxIds = null;
    }
    ctx.scheduleRender();
  }

  // -------------------------------------------------------------------------
  // The list

  function renderInbox() {
    const list = $('conversation-list');
    const focusedId =
      document.activeElement && list.contains(document.activeElement)
        ? document.activeElement.dataset.conversationId
        : null;
    const who = viewer(state);
    const recs = Array.from(state.convs.values())
      .filter((rec) => !state.orgFilter || rec.data.org_id === state.orgFilter)
      .filter(inboxMatches)
      .sort((a, b) => b.touched - a.touched);
    const items = recs.map((rec) => {
      const unread = rec.id === state.activeId && document.visibilityState === 'visible' && rec.loaded
        ? 0
        : unreadCount(rec);
      const last = rec.lastMessage;
      const hasMessages = Boolean(last) || (rec.data.last_seq || 0) > 0;
      let preview = '';
      if (last) {
        const who = last.sender ? nameOf(state, rec, last.sender.id) : '';
        const files = Array.isArray(last.attachments) ? last.attachments : [];
        const text = last.recalled
          ? 'Message recalled'
          : (last.body || (files.length ? `Attachment: ${files.map((f) => f.name).join(', ')}` : ''))
            .replace(/\s+/g, ' ');
        preview = who ? `${who}: ${text}` : text;
      }
      const others = participantsOf(rec)
        .filter((p) => !state.me || p.id !== state.me.id)
        .map((p) => {
          const mark = outsideMark(rec.data, p, who);
          return mark && mark.kind === 'external' ? `${p.name} (external)` : p.name;
        })
        .concat(invitees(rec.data).map((i) => inviteeLabel(i, hasMessages)));
      const button = el(
        'button',
        {
          type: 'button',
          class: `conversation-item${unread ? ' unread' : ''}`,
          'data-testid': 'conversation-item',
          'data-conversation-id': rec.id,
          'aria-current': rec.id === state.activeId ? 'true' : null,
          onclick: () => ctx.openConversation(rec.id),
        },
        el(
          'span',
          { class: 'conv-line' },
          el('span', { class: 'conv-title', 'data-testid': 'conversation-subject' }, conversationTitle(state, rec)),
          ...inboxMarks(rec.data, who),
          unread
            ? el(
                'span',
                {
                  class: 'badge',
                  'data-testid': 'unread-count',
                  'aria-label': `${unread} unread`,
                },
                String(unread),
              )
            : null,
        ),
        rec.data.subject && others.length ? el('span', { class: 'conv-people' }, joinNames(others)) : null,
        preview ? el('span', { class: 'conv-preview' }, preview) : null,
      );
      return el('li', {}, button);
    });
    list.replaceChildren(...items);
    setText($('inbox-empty'), state.orgFilter || state.inboxFilter ? 'No conversations here.' : 'No conversations yet.');
    show($('inbox-empty'), recs.length === 0);
    if (focusedId) {
      const again = list.querySelector(`[data-conversation-id="${CSS.escape(focusedId)}"]`);
      if (again) again.focus();
    }
  }

  $('inbox-switch').addEventListener('change', (e) => setInboxFilter(e.target.value));
  $('org-switch').addEventListener('change', (e) => {
    state.orgFilter = e.target.value;
    renderInbox();
  });

  return {
    render() {
      renderOrgSwitch();
      renderInboxSwitch();
      renderInbox();
    },
    /** The numbers (and so the switcher) again: at login, and when teams or numbers change. */
    loadNumbers: loadInboxNumbers,
    reset() {
      $('conversation-list').replaceChildren();
    },
  };
}
