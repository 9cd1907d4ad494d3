// BloomText demo client: inbox, conversations, live messages, typing, read receipts.
// All user-provided text reaches the DOM through text nodes (never innerHTML).
//
// The entry module: it creates the state, the HTTP API and the websocket, hands live frames
// to the views and to sync.js, and wires the views together. One module per view or concern:
// state.js (data), sync.js (events, sync, outbox), inbox.js, conversation.js, session.js,
// and the panes (org.js, audit.js, directory.js, numbers.js, import.js, new-conversation.js).

import { ApiError, createApi } from './api.js';
import { createAuditView } from './audit.js';
import { createConversationView } from './conversation.js';
import { createDirectory } from './directory.js';
import { invitees } from './externals.js';
import { createImportDialog } from './import.js';
import { createInbox } from './inbox.js';
import { createNewConversation } from './new-conversation.js';
import { createNumbersPanel } from './numbers.js';
import { createOrgPanel } from './org.js';
import { Realtime, websocketUrl } from './realtime.js';
import { createSession, readToken } from './session.js';
import { clearState, createState, hasGap, upsertConversation } from './state.js';
import { createSync } from './sync.js';
import { $, setText, show, toast } from './ui.js';

const TYPING_SHOW_MS = 5000;

const state = createState(readToken());

const api = createApi(() => state.token, () => auth.handleUnauthenticated());

const rt = new Realtime({
  url: websocketUrl('/ws'),
  getToken: () => state.token,
  onReady: (frame) => onReady(frame),
  onFrame: (frame) => onFrame(frame),
  onStatus: (s, info) => onConnectionStatus(s, info),
  onAuthRejected: () => onAuthRejected(),
});

const sync = createSync(api, state, rt, {
  scheduleRender: () => scheduleRender(),
  scheduleMarkRead: () => scheduleMarkRead(),
  clearTyping: (convId, userId) => clearTyping(convId, userId),
});

const inbox = createInbox(api, state, {
  openConversation: (id) => conversationView.open(id),
  scheduleRender: () => scheduleRender(),
  toast: (m) => toast(m),
});

const conversationView = createConversationView(api, state, rt, sync, {
  closePanes: () => closePanes(),
  render: () => render(),
  scheduleRender: () => scheduleRender(),
  scheduleMarkRead: () => scheduleMarkRead(),
  toast: (m) => toast(m),
});

const auth = createSession(api, state, rt, {
  reset: () => resetState(),
  render: () => render(),
  renderStatus: (s) => renderStatus(s),
  toast: (m) => toast(m),
  loadInboxNumbers: () => inbox.loadNumbers(),
  openConversation: (id, opts) => conversationView.open(id, opts),
});

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
  sync.requestSync(toSync);
  sync.flushOutbox();
  scheduleRender();
  scheduleMarkRead();
  for (const id of unknown) {
    await sync.fetchConversation(id);
    if (session !== state.session) return;
  }
}

function onFrame(frame) {
  switch (frame.type) {
    case 'event':
      sync.applyEvent(frame.event);
      break;
    case 'ack':
      onAck(frame);
      break;
    case 'synced':
      sync.onSynced(frame);
      break;
    case 'conversation': {
      const rec = upsertConversation(state, frame.conversation);
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
    case 'portal_locked':
      toast('A patient entered a wrong date of birth 5 times: their secure link is locked '
        + 'for 30 minutes.');
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
    conversationView.close();
    toast('You no longer have access to that conversation.');
  }
  inbox.loadNumbers(); // a team change may also change the numbers the user sees
  scheduleRender();
}

function onAck(frame) {
  const entry = frame.ref !== undefined ? state.refs.get(frame.ref) : null;
  if (entry) state.refs.delete(frame.ref);
  const ev = frame.event;
  const clientId = (ev && ev.client_id) || (entry && entry.item && entry.item.client_id);
  if (clientId) sync.removeFromOutbox(clientId);
  if (ev) sync.applyEvent(ev);
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
  conversationView.renderTyping();
}

function clearTyping(convId, userId) {
  const users = state.typing.get(convId);
  if (!users || !users.has(userId)) return;
  clearTimeout(users.get(userId));
  users.delete(userId);
  conversationView.renderTyping();
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
    fallback: Boolean(frame.fallback),
    error: frame.error || null,
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
      setTimeout(sync.flushOutbox, 2000);
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
    if (err instanceof ApiError && err.status === 401) auth.handleUnauthenticated();
    else rt.retryLater();
  }
}

// ---------------------------------------------------------------------------
// Reading

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
  inbox.render();
  conversationView.render();
}

function renderHeader() {
  setText($('org-name'), state.org ? state.org.name || '' : '');
  setText($('me-name'), state.me ? state.me.name || state.me.email || '' : '');
  show($('org-open'), Boolean(state.me && state.me.role === 'admin'));
  show($('audit-open'), Boolean(state.me && state.me.role === 'admin'
    && (!state.me.kind || state.me.kind === 'member')));
  show($('directory-open'), Boolean(state.me && (!state.me.kind || state.me.kind === 'member')));
}

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

// ---------------------------------------------------------------------------
// Panes over the conversation: Organisation, Audit, Directory, Phone numbers (one at a time)

const orgPanel = createOrgPanel(api, { me: () => state.me, toast: (m) => toast(m) });

const auditView = createAuditView(api, {
  me: () => state.me,
  session: () => state.session,
  toast: (m) => toast(m),
});

function openPane(name) {
  if (name !== 'org') orgPanel.close();
  if (name !== 'audit') auditView.close();
  if (name !== 'directory') directory.close();
  if (name !== 'numbers') numbersPanel.close();
  if (name === 'org') orgPanel.open();
  else if (name === 'audit') auditView.open();
  else if (name === 'directory') directory.open();
  else if (name === 'numbers') numbersPanel.open();
}

// Opening a conversation closes them: they lie over it.
function closePanes() {
  orgPanel.close();
  auditView.close();
  directory.close();
  numbersPanel.close();
}

const directory = createDirectory(api, {
  me: () => state.me,
  session: () => state.session,
  toast: (m) => toast(m),
  openOrg: () => openPane('org'),
  openNumbers: () => openPane('numbers'),
  openImport: () => importDialog.open(),
  onConversation: async (conv) => {
    const rec = upsertConversation(state, conv);
    if (!rec) return;
    if (rec.events.size === 0) rec.held = rec.data.last_seq || 0;
    await conversationView.open(conv.id);
  },
});

const numbersPanel = createNumbersPanel(api, {
  me: () => state.me,
  session: () => state.session,
  toast: (m) => toast(m),
  openOrg: () => openPane('org'),
  onChanged: () => inbox.loadNumbers(),
});

const importDialog = createImportDialog(api, {
  session: () => state.session,
  onFinished: () => directory.refresh(),
});

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
    const rec = upsertConversation(state, conv);
    if (!rec) return;
    if (rec.events.size === 0) rec.held = rec.data.last_seq || 0;
    // No mail server: the answer (and only it) carries each invitee's link to pass on.
    for (const inv of invitees(conv)) if (inv.link) rec.inviteLinks.set(inv.email, inv.link);
    await conversationView.open(conv.id);
  },
});

// ---------------------------------------------------------------------------
// Wiring

/** At login and logout: nothing of the previous user stays, in the state or on screen. */
function resetState() {
  orgPanel.close();
  auditView.reset();
  directory.reset();
  numbersPanel.reset();
  importDialog.reset();
  clearState(state);
  conversationView.reset();
  inbox.reset();
  newConversation.close();
}

function init() {
  $('org-open').addEventListener('click', () => openPane('org'));
  $('org-close').addEventListener('click', () => orgPanel.close());
  $('audit-open').addEventListener('click', () => openPane('audit'));
  $('audit-close').addEventListener('click', () => auditView.close());
  $('directory-open').addEventListener('click', () => openPane('directory'));
  $('conn-status').addEventListener('click', () => {
    if (rt.state === 'waiting') rt.connect();
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') {
      scheduleMarkRead();
      scheduleRender();
    }
  });

  if (state.token) auth.start();
  else auth.showLogin();
}

init();
