// The client's data: the shared state object, the conversation records in it, and the pure
// helpers that read them. No DOM and no network here: the views and app.js build on it,
// each taking the one `state` object app.js creates (so a test or a second page could make
// its own).

import { invitees } from './externals.js';

/** A fresh state; `token` comes from the session storage (session.js). */
export function createState(token) {
  return {
    token,
    session: 0, // bumped at every login/logout: late async results of an old session are dropped
    me: null,
    org: null,
    policies: null, // the own organisation's policies (from /me and `ready`)
    orgFilter: '', // inbox: '' for every organisation, else an org id
    // Inbox by team and number: '' (all), 'kind:internal', 'team:<id>' or 'number:<id>'.
    inboxFilter: '',
    inboxIds: null, // ids GET /conversations answered for the filter (null: not asked yet)
    numbers: [], // the phone numbers the caller sees, with team_name (patient-conv.js)
    convs: new Map(), // id -> conversation record (see newRecord)
    eventConv: new Map(), // event id -> conversation id
    activeId: null,
    members: [],
    membersLoaded: false,
    outbox: [], // pending sends: {client_id, conversation_id, body, status, ref, error}
    refs: new Map(), // ref -> {type: 'send', item} | {type: 'sync', ids}
    typing: new Map(), // conversation id -> Map(user id -> timer)
    touch: 0, // activity clock for the inbox order
    lastTypingSent: new Map(), // conversation id -> ms
  };
}

/**
 * Forgets everything of the signed-in user (login and logout), timers included, and starts
 * a new `session` so that answers still on their way are dropped. The token stays.
 */
export function clearState(state) {
  state.session += 1;
  state.inboxFilter = '';
  state.inboxIds = null;
  state.numbers = [];
  state.me = null;
  state.org = null;
  state.policies = null;
  state.orgFilter = '';
  for (const rec of state.convs.values()) clearTimeout(rec.inviteeWatch);
  state.convs.clear();
  state.eventConv.clear();
  state.activeId = null;
  state.members = [];
  state.membersLoaded = false;
  state.outbox = [];
  state.refs.clear();
  for (const users of state.typing.values()) for (const t of users.values()) clearTimeout(t);
  state.typing.clear();
  state.lastTypingSent.clear();
}

function newRecord(conv) {
  return {
    id: conv.id,
    data: { ...conv, last_seq: conv.last_seq || 0, read_seq: conv.read_seq || 0 },
    events: new Map(), // event id -> event
    seqs: new Map(), // seq -> event id
    held: conv.last_seq || 0, // highest seq up to which nothing is missing
    loaded: false,
    loading: false,
    loadError: null,
    syncing: false,
    gapFetchTried: false,
    receipts: new Map(), // participant id -> highest read seq
    names: new Map(), // participant id -> name (from receipts of people not listed)
    recalledIds: new Set(), // targets of recall events
    lastMessage: null, // newest message event, for the inbox preview
    draft: '',
    upload: null, // a file staged or being sent from the composer (attach.js)
    readSent: 0,
    touched: 0, // inbox order: server order first, then live activity
    inviteLinks: new Map(), // email -> link, from our own create answer when no mail is sent
    inviteeWatch: null, // timer: re-reads the conversation until its invitations have gone
  };
}

export function uuid() {
  if (window.crypto && typeof window.crypto.randomUUID === 'function') {
    return window.crypto.randomUUID();
  }
  const b = window.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function formatTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return sameDay ? time : `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

export function joinNames(names) {
  if (names.length <= 1) return names.join('');
  if (names.length === 2) return `${names[0]} and ${names[1]}`;
  return `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}

// ---------------------------------------------------------------------------
// Conversation records

export function unreadCount(rec) {
  return Math.max(0, (rec.data.last_seq || 0) - (rec.data.read_seq || 0));
}

export function participantsOf(rec) {
  return Array.isArray(rec.data.participants) ? rec.data.participants : [];
}

export function nameOf(state, rec, userId) {
  if (state.me && userId === state.me.id) return state.me.name || 'You';
  const p = participantsOf(rec).find((x) => x.id === userId);
  if (p && p.name) return p.name;
  if (rec && rec.names.has(userId)) return rec.names.get(userId);
  const m = state.members.find((x) => x.id === userId);
  if (m && m.name) return m.name;
  return 'Someone';
}

export function conversationTitle(state, rec) {
  if (rec.data.subject) return rec.data.subject;
  const others = participantsOf(rec)
    .filter((p) => !state.me || p.id !== state.me.id)
    .map((p) => p.name || 'Unknown')
    .concat(invitees(rec.data).map((i) => i.email));
  return others.length ? joinNames(others) : 'Conversation';
}

// Who "outside" is relative to: the viewer and their own organisation.
export function viewer(state) {
  return { meId: state.me ? state.me.id : null, myOrgId: state.org ? state.org.id : null };
}

export function sortedEvents(rec) {
  return Array.from(rec.events.values()).sort((a, b) => a.seq - b.seq);
}

/** Moves a conversation to the top of the inbox. */
export function touch(state, rec) {
  state.touch += 1;
  rec.touched = state.touch;
}

export function upsertConversation(state, conv, { fresh = true } = {}) {
  if (!conv || !conv.id) return null;
  let rec = state.convs.get(conv.id);
  if (!rec) {
    rec = newRecord(conv);
    state.convs.set(conv.id, rec);
    if (fresh) touch(state, rec);
  } else {
    const lastSeq = Math.max(rec.data.last_seq || 0, conv.last_seq || 0);
    const readSeq = Math.max(rec.data.read_seq || 0, conv.read_seq || 0);
    Object.assign(rec.data, conv, { last_seq: lastSeq, read_seq: readSeq });
  }
  for (const p of participantsOf(rec)) {
    if (typeof p.read_seq === 'number') {
      rec.receipts.set(p.id, Math.max(rec.receipts.get(p.id) || 0, p.read_seq));
    }
  }
  return rec;
}

/** Whether events above a missing seq are held (a sync or an HTTP fetch should fill it). */
export function hasGap(rec) {
  for (const seq of rec.seqs.keys()) if (seq > rec.held + 1) return true;
  return false;
}
