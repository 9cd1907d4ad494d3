// BloomText demo client: inbox, conversations, live messages, typing, read receipts.
// All user-provided text reaches the DOM through text nodes (never innerHTML).

import { ApiError, createApi, TOKEN_KEY } from './api.js';
import { el } from './dom.js';
import {
  EXTERNAL_NOTICE,
  hasOutsiders,
  inboxMarks,
  invitationsPending,
  inviteeLabel,
  invitees,
  inviteLinkNodes,
  markNode,
  organisations,
  outsideMark,
  peopleNodes,
} from './externals.js';
import { createDirectory } from './directory.js';
import { createImportDialog } from './import.js';
import { createNewConversation } from './new-conversation.js';
import { createNumbersPanel } from './numbers.js';
import { createOrgPanel } from './org.js';
import { CHANNELS, loadNumbers, numberLabel, SMS_WARNING } from './patient-conv.js';
import { Realtime, websocketUrl } from './realtime.js';

const TYPING_SEND_EVERY_MS = 3000;
const TYPING_SHOW_MS = 5000;
const HISTORY_PAGE = 1000;
const HISTORY_MAX_PAGES = 50;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------
// State

const state = {
  token: readToken(),
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

const api = createApi(() => state.token, () => handleUnauthenticated());

const rt = new Realtime({
  url: websocketUrl('/ws'),
  getToken: () => state.token,
  onReady: (frame) => onReady(frame),
  onFrame: (frame) => onFrame(frame),
  onStatus: (s, info) => onConnectionStatus(s, info),
  onAuthRejected: () => onAuthRejected(),
});

function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function writeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage unavailable: the token lives in memory only */
  }
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
    readSent: 0,
    touched: 0, // inbox order: server order first, then live activity
    inviteLinks: new Map(), // email -> link, from our own create answer when no mail is sent
    inviteeWatch: null, // timer: re-reads the conversation until its invitations have gone
  };
}

function uuid() {
  if (window.crypto && typeof window.crypto.randomUUID === 'function') {
    return window.crypto.randomUUID();
  }
  const b = window.crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// ---------------------------------------------------------------------------
// DOM helpers

function setText(node, text) {
  node.textContent = text;
}

function show(node, visible) {
  node.hidden = !visible;
}

let toastTimer = null;
function toast(message) {
  const node = $('toast');
  setText(node, message);
  show(node, true);
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => show(node, false), 6000);
}

function formatTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return sameDay ? time : `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

function joinNames(names) {
  if (names.length <= 1) return names.join('');
  if (names.length === 2) return `${names[0]} and ${names[1]}`;
  return `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}

// ---------------------------------------------------------------------------
// Conversations and events

function unreadCount(rec) {
  return Math.max(0, (rec.data.last_seq || 0) - (rec.data.read_seq || 0));
}

function participantsOf(rec) {
  return Array.isArray(rec.data.participants) ? rec.data.participants : [];
}

function nameOf(rec, userId) {
  if (state.me && userId === state.me.id) return state.me.name || 'You';
  const p = participantsOf(rec).find((x) => x.id === userId);
  if (p && p.name) return p.name;
  if (rec && rec.names.has(userId)) return rec.names.get(userId);
  const m = state.members.find((x) => x.id === userId);
  if (m && m.name) return m.name;
  return 'Someone';
}

function conversationTitle(rec) {
  if (rec.data.subject) return rec.data.subject;
  const others = participantsOf(rec)
    .filter((p) => !state.me || p.id !== state.me.id)
    .map((p) => p.name || 'Unknown')
    .concat(invitees(rec.data).map((i) => i.email));
  return others.length ? joinNames(others) : 'Conversation';
}

// Who "outside" is relative to: the viewer and their own organisation.
function viewer() {
  return { meId: state.me ? state.me.id : null, myOrgId: state.org ? state.org.id : null };
}

function sortedEvents(rec) {
  return Array.from(rec.events.values()).sort((a, b) => a.seq - b.seq);
}

function touch(rec) {
  state.touch += 1;
  rec.touched = state.touch;
}

function upsertConversation(conv, { fresh = true } = {}) {
  if (!conv || !conv.id) return null;
  let rec = state.convs.get(conv.id);
  if (!rec) {
    rec = newRecord(conv);
    state.convs.set(conv.id, rec);
    if (fresh) touch(rec);
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

/**
 * Stores one event (deduplicated by id), advances the contiguous `held` seq, and
 * asks for a sync when a gap shows up (unless the event comes from a history fetch).
 */
function applyEvent(ev, { history = false } = {}) {
  if (!ev || !ev.id || !ev.conversation_id || typeof ev.seq !== 'number') return;
  const rec = state.convs.get(ev.conversation_id);
  if (!rec) {
    // An event for a conversation we have not heard of: fetch it, then apply.
    fetchConversation(ev.conversation_id).then((r) => {
      if (r) applyEvent(ev, { history });
    });
    return;
  }
  const known = rec.events.get(ev.id);
  if (known) {
    if (ev.recalled && !known.recalled) {
      known.recalled = true;
      delete known.body;
      known.attachments = [];
    }
    if (Array.isArray(ev.deliveries)) known.deliveries = ev.deliveries;
    scheduleRender();
    return;
  }
  if (rec.seqs.has(ev.seq)) return; // same seq under another id: keep the first
  const stored = { ...ev };
  rec.events.set(ev.id, stored);
  rec.seqs.set(ev.seq, ev.id);
  state.eventConv.set(ev.id, rec.id);

  if (ev.kind === 'recall' && ev.target_id) {
    rec.recalledIds.add(ev.target_id);
    const target = rec.events.get(ev.target_id);
    if (target) {
      target.recalled = true;
      delete target.body;
      target.attachments = [];
    }
  }
  if (ev.kind === 'message') {
    if (rec.recalledIds.has(ev.id)) {
      // Its recall arrived first.
      stored.recalled = true;
      delete stored.body;
      stored.attachments = [];
    }
    if (!rec.lastMessage || ev.seq > rec.lastMessage.seq) rec.lastMessage = stored;
  }

  const mine = state.me && ev.sender && ev.sender.id === state.me.id;
  if (mine && ev.client_id) removeFromOutbox(ev.client_id);

  while (rec.seqs.has(rec.held + 1)) rec.held += 1;
  if (rec.held >= ev.seq) rec.gapFetchTried = false;
  rec.data.last_seq = Math.max(rec.data.last_seq || 0, ev.seq, rec.held);
  // Your own message does not make the conversation unread.
  if (mine && (rec.data.read_seq || 0) >= ev.seq - 1) rec.data.read_seq = ev.seq;

  if (ev.sender && ev.sender.id) clearTyping(rec.id, ev.sender.id);
  if (!history && (ev.kind === 'participant_added' || ev.kind === 'participant_removed')) {
    fetchConversation(rec.id, { fresh: true }); // the participants changed
  }
  if (!history && ev.kind === 'message' && invitationsPending(rec.data)) watchInvitees(rec);
  if (!history) touch(rec);
  if (!history && ev.seq > rec.held + 1) requestSync([rec.id]);
  scheduleRender();
  if (rec.id === state.activeId) scheduleMarkRead();
}

function removeFromOutbox(clientId) {
  const before = state.outbox.length;
  state.outbox = state.outbox.filter((item) => item.client_id !== clientId);
  if (state.outbox.length !== before) scheduleRender();
}

const fetching = new Map();
/** GET of one conversation (shared while in flight; `fresh` waits for it, then asks again). */
function fetchConversation(id, { fresh = false } = {}) {
  if (fetching.has(id)) {
    const running = fetching.get(id);
    return fresh ? running.then(() => fetchConversation(id)) : running;
  }
  const session = state.session;
  const p = api
    .conversation(id)
    .then((conv) => {
      if (session !== state.session) return null;
      const rec = upsertConversation(conv);
      scheduleRender();
      return rec;
    })
    .catch(() => null)
    .finally(() => fetching.delete(id));
  fetching.set(id, p);
  return p;
}

// The invitation mail of an outside address goes out shortly after the first message:
// re-read the conversation a few times so its invitees show "(invited)".
function watchInvitees(rec) {
  if (rec.inviteeWatch) return;
  const session = state.session;
  let tries = 0;
  const tick = async () => {
    rec.inviteeWatch = 'reading'; // no second watch starts meanwhile
    tries += 1;
    const fresh = session === state.session ? await fetchConversation(rec.id, { fresh: true }) : null;
    rec.inviteeWatch = null;
    if (fresh && invitationsPending(fresh.data) && tries < 5 && session === state.session) {
      rec.inviteeWatch = setTimeout(tick, 3000 * tries);
    }
  };
  rec.inviteeWatch = setTimeout(tick, 3000);
}

async function loadHistory(rec) {
  const session = state.session;
  let after = 0;
  for (let page = 0; page < HISTORY_MAX_PAGES; page++) {
    const res = await api.events(rec.id, after, HISTORY_PAGE);
    if (session !== state.session) return;
    const events = (res && res.events) || [];
    for (const ev of events) applyEvent(ev, { history: true });
    if (res && typeof res.last_seq === 'number') {
      rec.data.last_seq = Math.max(rec.data.last_seq || 0, res.last_seq);
    }
    const maxSeq = events.reduce((m, ev) => Math.max(m, ev.seq), after);
    if (events.length < HISTORY_PAGE || !res || maxSeq >= res.last_seq) break;
    after = maxSeq;
  }
  let h = 0;
  while (rec.seqs.has(h + 1)) h += 1;
  rec.held = Math.max(rec.held, h);
  rec.loaded = true;
}

// ---------------------------------------------------------------------------
// Sync (after reconnect, and when a gap shows up)

function requestSync(ids) {
  if (!rt.ready) return; // the next `ready` syncs everything
  const since = {};
  const sent = [];
  for (const id of ids) {
    const rec = state.convs.get(id);
    if (!rec || rec.syncing) continue;
    since[id] = rec.held;
    rec.syncing = true;
    sent.push(id);
  }
  if (!sent.length) return;
  const ref = rt.nextRef();
  state.refs.set(ref, { type: 'sync', ids: sent, held: sent.map((id) => state.convs.get(id).held) });
  if (!rt.send({ type: 'sync', ref, since })) {
    state.refs.delete(ref);
    for (const id of sent) state.convs.get(id).syncing = false;
  }
}

function findSyncEntry(frame) {
  if (frame.ref !== undefined && frame.ref !== null && state.refs.has(frame.ref)) {
    const entry = state.refs.get(frame.ref);
    state.refs.delete(frame.ref);
    return entry;
  }
  // No usable ref: take the oldest outstanding sync.
  for (const [ref, entry] of state.refs) {
    if (entry.type === 'sync') {
      state.refs.delete(ref);
      return entry;
    }
  }
  return null;
}

function onSynced(frame) {
  const entry = findSyncEntry(frame);
  const more = (Array.isArray(frame.more) ? frame.more : [])
    .map((x) => (typeof x === 'string' ? x : x && (x.id || x.conversation_id)))
    .filter(Boolean);
  if (entry) {
    entry.ids.forEach((id, i) => {
      const rec = state.convs.get(id);
      if (!rec) return;
      rec.syncing = false;
      const gap = hasGap(rec);
      if (gap && !more.includes(id)) {
        if (rec.held > entry.held[i]) more.push(id); // progress: try again
        else fillGapOverHttp(rec); // no progress: fall back once to HTTP
      }
    });
  }
  if (more.length) requestSync(more);
  scheduleRender();
}

function hasGap(rec) {
  for (const seq of rec.seqs.keys()) if (seq > rec.held + 1) return true;
  return false;
}

async function fillGapOverHttp(rec) {
  if (rec.gapFetchTried) return;
  rec.gapFetchTried = true;
  try {
    const res = await api.events(rec.id, rec.held, HISTORY_PAGE);
    for (const ev of (res && res.events) || []) applyEvent(ev, { history: true });
  } catch {
    /* the next reconnect syncs again */
  }
}

// ---------------------------------------------------------------------------
// Websocket frames

async function onReady(frame) {
  const session = state.session;
  if (frame.user) state.me = frame.user;
  if (frame.org) state.org = frame.org;
  if (frame.policies) state.policies = frame.policies;
  const toSync = [];
  const unknown = [];
  for (const info of frame.conversations || []) {
    const rec = state.convs.get(info.id);
    if (!rec) {
      unknown.push(info.id);
      continue;
    }
    if (typeof info.read_seq === 'number') {
      rec.data.read_seq = Math.max(rec.data.read_seq || 0, info.read_seq);
    }
    if (typeof info.last_seq === 'number' && info.last_seq > rec.held) toSync.push(info.id);
  }
  // Conversations with a gap we were already waiting on.
  for (const rec of state.convs.values()) {
    rec.syncing = false;
    if (hasGap(rec) && !toSync.includes(rec.id)) toSync.push(rec.id);
  }
  requestSync(toSync);
  flushOutbox();
  scheduleRender();
  scheduleMarkRead();
  for (const id of unknown) {
    await fetchConversation(id);
    if (session !== state.session) return;
  }
}

function onFrame(frame) {
  switch (frame.type) {
    case 'event':
      applyEvent(frame.event);
      break;
    case 'ack':
      onAck(frame);
      break;
    case 'synced':
      onSynced(frame);
      break;
    case 'conversation': {
      const rec = upsertConversation(frame.conversation);
      if (rec && !rec.loaded && rec.events.size === 0) rec.held = rec.data.last_seq || 0;
      scheduleRender();
      break;
    }
    case 'receipt':
      onReceipt(frame);
      break;
    case 'typing':
      onTyping(frame);
      break;
    case 'delivery':
      onDelivery(frame);
      break;
    case 'job':
      importDialog.onJob(frame.job);
      break;
    case 'conversation_removed':
      removeConversations(frame.conversation_ids);
      break;
    case 'error':
      onError(frame);
      break;
    default:
      break; // unknown frame types are ignored (forward compatible)
  }
}

// The user lost access (e.g. left the team of the conversation's number): the
// conversations leave the inbox, and the one open closes.
function removeConversations(ids) {
  if (!Array.isArray(ids) || !ids.length) return;
  let closedOpen = false;
  for (const id of ids) {
    const rec = state.convs.get(id);
    if (!rec) continue;
    clearTimeout(rec.inviteeWatch);
    for (const evId of rec.events.keys()) state.eventConv.delete(evId);
    state.convs.delete(id);
    state.typing.delete(id);
    state.outbox = state.outbox.filter((item) => item.conversation_id !== id);
    if (state.inboxIds) state.inboxIds.delete(id);
    if (state.activeId === id) closedOpen = true;
  }
  if (closedOpen) {
    closeConversation();
    toast('You no longer have access to that conversation.');
  }
  loadInboxNumbers(); // a team change may also change the numbers the user sees
  scheduleRender();
}

function onAck(frame) {
  const entry = frame.ref !== undefined ? state.refs.get(frame.ref) : null;
  if (entry) state.refs.delete(frame.ref);
  const ev = frame.event;
  const clientId = (ev && ev.client_id) || (entry && entry.item && entry.item.client_id);
  if (clientId) removeFromOutbox(clientId);
  if (ev) applyEvent(ev);
}

function onReceipt(frame) {
  const rec = state.convs.get(frame.conversation_id);
  const who = frame.participant;
  if (!rec || !who || typeof frame.seq !== 'number') return;
  if (state.me && who.id === state.me.id) {
    // Read on another device or tab.
    rec.data.read_seq = Math.max(rec.data.read_seq || 0, frame.seq);
  } else {
    rec.receipts.set(who.id, Math.max(rec.receipts.get(who.id) || 0, frame.seq));
    if (who.name) rec.names.set(who.id, who.name);
  }
  scheduleRender();
}

function onTyping(frame) {
  const convId = frame.conversation_id;
  const userId = frame.user_id;
  if (!convId || !userId || (state.me && userId === state.me.id)) return;
  let users = state.typing.get(convId);
  if (!users) {
    users = new Map();
    state.typing.set(convId, users);
  }
  clearTimeout(users.get(userId));
  users.set(userId, setTimeout(() => clearTyping(convId, userId), TYPING_SHOW_MS));
  renderTyping();
}

function clearTyping(convId, userId) {
  const users = state.typing.get(convId);
  if (!users || !users.has(userId)) return;
  clearTimeout(users.get(userId));
  users.delete(userId);
  renderTyping();
}

function onDelivery(frame) {
  const convId = state.eventConv.get(frame.message_id);
  const rec = convId && state.convs.get(convId);
  const ev = rec && rec.events.get(frame.message_id);
  if (!ev) return;
  const deliveries = Array.isArray(ev.deliveries) ? ev.deliveries.slice() : [];
  const i = deliveries.findIndex(
    (d) => d.recipient_id === frame.recipient_id && d.channel === frame.channel,
  );
  const entry = {
    recipient_id: frame.recipient_id,
    channel: frame.channel,
    status: frame.status,
    at: frame.at,
  };
  if (i >= 0) deliveries[i] = entry;
  else deliveries.push(entry);
  ev.deliveries = deliveries;
  scheduleRender();
}

function onError(frame) {
  const entry = frame.ref !== undefined && frame.ref !== null ? state.refs.get(frame.ref) : null;
  if (entry) state.refs.delete(frame.ref);
  if (entry && entry.type === 'send') {
    const item = entry.item;
    if (frame.code === 'rate_limited' || frame.code === 'unavailable') {
      item.status = 'queued';
      setTimeout(flushOutbox, 2000);
    } else {
      item.status = 'failed';
      item.error = frame.message || frame.code || 'Not sent';
    }
    scheduleRender();
    return;
  }
  if (entry && entry.type === 'sync') {
    for (const id of entry.ids) {
      const rec = state.convs.get(id);
      if (rec) rec.syncing = false;
    }
    return;
  }
  toast(frame.message || `Error: ${frame.code || 'unknown'}`);
}

function onConnectionStatus(s) {
  if (s !== 'ready') {
    // Anything in flight on the old connection is resent after the next `ready`.
    for (const item of state.outbox) if (item.status === 'sending') item.status = 'queued';
    state.refs.clear();
    for (const rec of state.convs.values()) rec.syncing = false;
  }
  renderStatus(s);
  scheduleRender();
}

async function onAuthRejected() {
  // 4001: the token may have been revoked. Check over HTTP before giving up.
  try {
    await api.me();
    rt.retryLater();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) handleUnauthenticated();
    else rt.retryLater();
  }
}

// ---------------------------------------------------------------------------
// Sending, typing, reading

function sendMessage(convId, body) {
  state.outbox.push({
    client_id: uuid(),
    conversation_id: convId,
    body,
    status: 'queued',
    ref: null,
    error: null,
  });
  flushOutbox();
  scheduleRender();
}

function flushOutbox() {
  if (!rt.ready) return;
  for (const item of state.outbox) {
    if (item.status !== 'queued') continue;
    const ref = rt.nextRef();
    const ok = rt.send({
      type: 'send',
      ref,
      conversation_id: item.conversation_id,
      client_id: item.client_id, // the same on every retry: the server never duplicates
      body: item.body,
    });
    if (!ok) break;
    item.ref = ref;
    item.status = 'sending';
    state.refs.set(ref, { type: 'send', item });
  }
  scheduleRender();
}

function maybeSendTyping() {
  const convId = state.activeId;
  if (!convId || !rt.ready) return;
  const now = Date.now();
  if (now - (state.lastTypingSent.get(convId) || 0) < TYPING_SEND_EVERY_MS) return;
  if (rt.send({ type: 'typing', conversation_id: convId })) state.lastTypingSent.set(convId, now);
}

let markReadQueued = false;
function scheduleMarkRead() {
  if (markReadQueued) return;
  markReadQueued = true;
  setTimeout(() => {
    markReadQueued = false;
    markRead();
  }, 0);
}

function markRead() {
  const rec = state.activeId && state.convs.get(state.activeId);
  if (!rec || !rec.loaded || document.visibilityState !== 'visible') return;
  const seq = rec.held;
  if (seq <= 0) return;
  if (seq > (rec.data.read_seq || 0)) {
    rec.data.read_seq = seq;
    scheduleRender();
  }
  if (seq <= rec.readSent) return;
  rec.readSent = seq;
  if (!rt.send({ type: 'read', conversation_id: rec.id, seq })) {
    api.markRead(rec.id, seq).catch(() => {
      rec.readSent = 0; // try again on the next occasion
    });
  }
}

// ---------------------------------------------------------------------------
// Rendering

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  // setTimeout rather than requestAnimationFrame: background tabs must update too.
  setTimeout(() => {
    renderQueued = false;
    render();
  }, 0);
}

function render() {
  if (!state.token) return;
  renderHeader();
  renderOrgSwitch();
  renderInboxSwitch();
  renderInbox();
  renderConversation();
}

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

// ---------------------------------------------------------------------------
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
    for (const conv of convs) upsertConversation(conv, { fresh: false });
    state.inboxIds = new Set(convs.map((c) => c.id));
  } catch (err) {
    if (session !== state.session) return;
    if (err.status === 402) {
      state.numbers = [];
      state.inboxFilter = '';
    } else {
      toast(`Could not filter the inbox: ${err.message}`);
    }
  }
  scheduleRender();
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
  scheduleRender();
}

// ---------------------------------------------------------------------------
// Panes over the conversation: Organisation, Directory, Phone numbers (one at a time)

function renderHeader() {
  setText($('org-name'), state.org ? state.org.name || '' : '');
  setText($('me-name'), state.me ? state.me.name || state.me.email || '' : '');
  show($('org-open'), Boolean(state.me && state.me.role === 'admin'));
  show($('directory-open'), Boolean(state.me && (!state.me.kind || state.me.kind === 'member')));
}

const orgPanel = createOrgPanel(api, { me: () => state.me, toast: (m) => toast(m) });

function openPane(name) {
  if (name !== 'org') orgPanel.close();
  if (name !== 'directory') directory.close();
  if (name !== 'numbers') numbersPanel.close();
  if (name === 'org') orgPanel.open();
  else if (name === 'directory') directory.open();
  else if (name === 'numbers') numbersPanel.open();
}

const directory = createDirectory(api, {
  me: () => state.me,
  session: () => state.session,
  toast: (m) => toast(m),
  openOrg: () => openPane('org'),
  openNumbers: () => openPane('numbers'),
  openImport: () => importDialog.open(),
  onConversation: async (conv) => {
    const rec = upsertConversation(conv);
    if (!rec) return;
    if (rec.events.size === 0) rec.held = rec.data.last_seq || 0;
    await openConversation(conv.id);
  },
});

const numbersPanel = createNumbersPanel(api, {
  me: () => state.me,
  session: () => state.session,
  toast: (m) => toast(m),
  openOrg: () => openPane('org'),
  onChanged: () => loadInboxNumbers(),
});

const importDialog = createImportDialog(api, {
  session: () => state.session,
  onFinished: () => directory.refresh(),
});

function renderStatus(s) {
  const node = $('conn-status');
  const labels = {
    idle: 'Offline',
    connecting: 'Connecting…',
    ready: 'Online',
    waiting: 'Reconnecting…',
    rejected: 'Signed out',
    stopped: 'Offline',
  };
  node.dataset.state = s;
  setText(node, labels[s] || s);
}

function renderInbox() {
  const list = $('conversation-list');
  const focusedId =
    document.activeElement && list.contains(document.activeElement)
      ? document.activeElement.dataset.conversationId
      : null;
  const who = viewer();
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
      const who = last.sender ? nameOf(rec, last.sender.id) : '';
      const text = last.recalled ? 'Message recalled' : (last.body || '').replace(/\s+/g, ' ');
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
        onclick: () => openConversation(rec.id),
      },
      el(
        'span',
        { class: 'conv-line' },
        el('span', { class: 'conv-title', 'data-testid': 'conversation-subject' }, conversationTitle(rec)),
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

// A patient conversation says how it reaches the patient; plain SMS warns about content.
function renderChannelNotice(rec) {
  const node = $('channel-notice');
  if (rec.data.kind !== 'patient') {
    show(node, false);
    return;
  }
  const channel = CHANNELS.find(([value]) => value === (rec.data.channel || 'secure_sms'));
  const number = state.numbers.find((n) => n.id === rec.data.phone_number_id);
  const how = `${channel ? channel[1] : rec.data.channel}${number ? ` from ${numberLabel(number)}` : ''}`;
  // "Normal SMS from …: the text itself is sent. Never include patient information."
  const warning = SMS_WARNING.slice(SMS_WARNING.indexOf(':') + 1);
  setText(node, rec.data.channel === 'sms' ? `${how}:${warning}` : `${how}.`);
  node.classList.toggle('plain', rec.data.channel !== 'sms');
  show(node, true);
}

function renderConversation() {
  const rec = state.activeId && state.convs.get(state.activeId);
  document.querySelector('.app').classList.toggle('has-active', Boolean(rec));
  show($('conv-placeholder'), !rec);
  show($('conv-pane'), Boolean(rec));
  if (!rec) return;

  setText($('conv-title'), conversationTitle(rec));
  const who = viewer();
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
  for (const ev of sortedEvents(rec)) {
    const seen = ev.kind === 'message' && !ev.recalled ? seenBy(rec, ev) : [];
    entries.push({
      key: `e:${ev.id}`,
      sig: JSON.stringify([ev.seq, ev.recalled, ev.body, ev.attachments, ev.deliveries, seen,
        ev.sender && ev.sender.name, state.me && state.me.id, rec.data.org_name]),
      build: () => renderEvent(rec, ev, seen),
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
      if (cached) cached.node.replaceWith(node);
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
    if (pid !== state.me.id && seq >= ev.seq) names.push(nameOf(rec, pid));
  }
  return names;
}

function renderEvent(rec, ev, seenNames) {
  const senderId = ev.sender && ev.sender.id;
  const senderName = ev.sender ? ev.sender.name || nameOf(rec, senderId) : 'System';
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
      mine ? null : markNode(outsideMark(rec.data, ev.sender, viewer())),
      el('time', { datetime: ev.created_at || '', title: ev.created_at || '' }, formatTime(ev.created_at)),
    ),
  ];
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
          files.map((f) =>
            el(
              'li',
              {},
              el(
                'button',
                { type: 'button', class: 'link', onclick: () => downloadFile(f) },
                `${f.name || 'file'}${f.size ? ` (${formatSize(f.size)})` : ''}`,
              ),
            ),
          ),
        ),
      );
    }
  }
  if (Array.isArray(ev.deliveries) && ev.deliveries.length) {
    const text = ev.deliveries
      .map((d) => `${d.channel === 'email' ? 'Email' : 'SMS'}: ${String(d.status || '').replace(/_/g, ' ')}`)
      .join(' · ');
    children.push(el('div', { class: 'deliveries', 'data-testid': 'deliveries' }, text));
  }
  if (mine && !ev.recalled && seenNames.length) {
    children.push(
      el('div', { class: 'receipt', 'data-testid': 'receipt' }, `Seen by ${joinNames(seenNames)}`),
    );
  }
  return el(
    'li',
    {
      class: `message ${mine ? 'mine' : 'theirs'}`,
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
  const whom = subject ? subject.name || nameOf(rec, subject.id) : 'a participant';
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
                  flushOutbox();
                },
              },
              'Retry',
            ),
            ' ',
            el(
              'button',
              { type: 'button', class: 'link', onclick: () => removeFromOutbox(item.client_id) },
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
  const names = Array.from(users.keys()).map((id) => nameOf(rec, id));
  setText(node, `${joinNames(names)} ${names.length === 1 ? 'is' : 'are'} typing…`);
  show(node, true);
}

function formatSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${Math.round(n / 1024)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

async function downloadFile(file) {
  try {
    const blob = await api.fileBlob(file.id);
    const url = URL.createObjectURL(blob);
    const a = el('a', { href: url, download: file.name || 'file' });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (err) {
    toast(err.message || 'Could not download the file.');
  }
}

// ---------------------------------------------------------------------------
// Navigation

async function openConversation(id, { focus = true } = {}) {
  const rec = state.convs.get(id);
  if (!rec) return;
  orgPanel.close(); // the panes lie over the conversation
  directory.close();
  numbersPanel.close();
  const composer = $('composer');
  const previous = state.activeId && state.convs.get(state.activeId);
  if (previous && previous.id !== id) previous.draft = composer.value;
  if (state.activeId !== id) {
    composer.value = rec.draft || '';
    updateSendButton();
  }
  state.activeId = id;
  const hash = `#c=${encodeURIComponent(id)}`;
  if (window.location.hash !== hash) window.history.replaceState(null, '', hash);
  render();
  if (focus) composer.focus();
  if (!rec.loaded && !rec.loading) {
    rec.loading = true;
    rec.loadError = null;
    scheduleRender();
    try {
      await loadHistory(rec);
    } catch (err) {
      rec.loadError = err.message || 'error';
    } finally {
      rec.loading = false;
    }
    scheduleRender();
  }
  scheduleMarkRead();
}

function closeConversation() {
  const rec = state.activeId && state.convs.get(state.activeId);
  if (rec) rec.draft = $('composer').value;
  state.activeId = null;
  window.history.replaceState(null, '', window.location.pathname);
  render();
}

function conversationFromHash() {
  const m = /^#c=(.+)$/.exec(window.location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

// ---------------------------------------------------------------------------
// Session

function showLogin() {
  show($('app-view'), false);
  show($('login-view'), true);
  $('login-email').focus();
}

function showApp() {
  show($('login-view'), false);
  show($('app-view'), true);
}

async function startSession() {
  const session = state.session;
  showApp();
  renderStatus('idle');
  render();
  try {
    if (!state.me) {
      const me = await api.me();
      if (session !== state.session) return;
      state.me = me.user;
      state.org = me.org;
      state.policies = me.policies || null;
    }
    const convs = await api.conversations();
    if (session !== state.session) return;
    // The inbox comes most recent first: keep that order below anything live.
    convs.forEach((conv, i) => {
      const rec = upsertConversation(conv, { fresh: false });
      if (rec) rec.touched = -i;
    });
  } catch (err) {
    if (session !== state.session) return;
    if (err instanceof ApiError && err.status === 401) return; // handled: back to login
    toast(`Could not load the inbox: ${err.message}`);
  }
  render();
  rt.start();
  loadInboxNumbers();
  const fromHash = conversationFromHash();
  if (fromHash && state.convs.has(fromHash)) openConversation(fromHash, { focus: false });
}

function resetState() {
  orgPanel.close();
  directory.reset();
  numbersPanel.reset();
  importDialog.reset();
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
  messageNodes.clear();
  $('messages').replaceChildren();
  delete $('messages').dataset.conversationId;
  $('conversation-list').replaceChildren();
  $('composer').value = '';
  newConversation.close();
}

function handleUnauthenticated() {
  if (!state.token) return;
  rt.stop();
  state.token = null;
  writeToken(null);
  resetState();
  window.history.replaceState(null, '', window.location.pathname);
  showLogin();
  const err = $('login-error');
  setText(err, 'Your session has ended. Please log in again.');
  show(err, true);
}

async function logout() {
  if (state.outbox.length && !window.confirm('Some messages are not sent yet. Log out anyway?')) {
    return;
  }
  rt.stop();
  try {
    await api.logout();
  } catch {
    /* the token is dropped locally either way */
  }
  state.token = null;
  writeToken(null);
  resetState();
  window.history.replaceState(null, '', window.location.pathname);
  $('login-password').value = '';
  show($('login-error'), false);
  showLogin();
}

async function onLoginSubmit(event) {
  event.preventDefault();
  const email = $('login-email').value.trim();
  const password = $('login-password').value;
  const errNode = $('login-error');
  const button = $('login-submit');
  show(errNode, false);
  if (!email || !password) {
    setText(errNode, 'Enter your email and password.');
    show(errNode, true);
    return;
  }
  button.disabled = true;
  try {
    const res = await api.login(email, password);
    resetState();
    state.token = res.token;
    writeToken(res.token);
    state.me = res.user || null;
    $('login-password').value = '';
    await startSession();
  } catch (err) {
    let message = err.message || 'Login failed.';
    if (err.status === 401) message = 'Wrong email or password.';
    else if (err.status === 429) message = 'Too many attempts. Try again in a moment.';
    setText(errNode, message);
    show(errNode, true);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------
// New conversation (new-conversation.js)

const newConversation = createNewConversation(api, {
  me: () => state.me,
  policies: () => state.policies,
  session: () => state.session,
  setMembers: (members) => {
    state.members = members;
    state.membersLoaded = true;
  },
  onCreated: async (conv) => {
    const rec = upsertConversation(conv);
    if (!rec) return;
    if (rec.events.size === 0) rec.held = rec.data.last_seq || 0;
    // No mail server: the answer (and only it) carries each invitee's link to pass on.
    for (const inv of invitees(conv)) if (inv.link) rec.inviteLinks.set(inv.email, inv.link);
    await openConversation(conv.id);
  },
});

// ---------------------------------------------------------------------------
// Wiring

function updateSendButton() {
  $('send').disabled = !state.activeId || $('composer').value.trim() === '';
}

function onComposerSubmit(event) {
  event.preventDefault();
  const composer = $('composer');
  const body = composer.value.trim();
  if (!body || !state.activeId) return;
  sendMessage(state.activeId, body);
  composer.value = '';
  state.lastTypingSent.delete(state.activeId);
  updateSendButton();
  composer.focus();
}

function init() {
  $('login-form').addEventListener('submit', onLoginSubmit);
  $('logout').addEventListener('click', logout);
  $('org-open').addEventListener('click', () => openPane('org'));
  $('org-close').addEventListener('click', () => orgPanel.close());
  $('directory-open').addEventListener('click', () => openPane('directory'));
  $('inbox-switch').addEventListener('change', (e) => setInboxFilter(e.target.value));
  setText($('external-notice'), EXTERNAL_NOTICE);
  $('org-switch').addEventListener('change', (e) => {
    state.orgFilter = e.target.value;
    renderInbox();
  });
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
  $('conn-status').addEventListener('click', () => {
    if (rt.state === 'waiting') rt.connect();
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') {
      scheduleMarkRead();
      scheduleRender();
    }
  });
  window.addEventListener('hashchange', () => {
    const id = conversationFromHash();
    if (id && id !== state.activeId && state.convs.has(id)) openConversation(id);
  });

  if (state.token) startSession();
  else showLogin();
}

init();
