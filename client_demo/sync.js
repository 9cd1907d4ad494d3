// Keeps the local conversations in step with the server: events (live, from history, or
// filling a gap), `sync` requests after a reconnect or a gap, and the outbox of messages
// on their way. No DOM: whatever changes asks app.js to render through `scheduleRender`.

import { invitationsPending } from './externals.js';
import { hasGap, touch, upsertConversation, uuid } from './state.js';

const HISTORY_PAGE = 1000;
const HISTORY_MAX_PAGES = 50;

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {object} state see state.js
 * @param {import('./realtime.js').Realtime} rt
 * @param {{
 *   scheduleRender: () => void,
 *   scheduleMarkRead: () => void,
 *   clearTyping: (convId: string, userId: string) => void,
 * }} ctx
 */
export function createSync(api, state, rt, ctx) {
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
      ctx.scheduleRender();
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

    if (ev.sender && ev.sender.id) ctx.clearTyping(rec.id, ev.sender.id);
    if (!history && (ev.kind === 'participant_added' || ev.kind === 'participant_removed')) {
      fetchConversation(rec.id, { fresh: true }); // the participants changed
    }
    if (!history && ev.kind === 'message' && invitationsPending(rec.data)) watchInvitees(rec);
    if (!history) touch(state, rec);
    if (!history && ev.seq > rec.held + 1) requestSync([rec.id]);
    ctx.scheduleRender();
    if (rec.id === state.activeId) ctx.scheduleMarkRead();
  }

  function removeFromOutbox(clientId) {
    const before = state.outbox.length;
    state.outbox = state.outbox.filter((item) => item.client_id !== clientId);
    if (state.outbox.length !== before) ctx.scheduleRender();
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
        const rec = upsertConversation(state, conv);
        ctx.scheduleRender();
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

  // -------------------------------------------------------------------------
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
    ctx.scheduleRender();
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

  // -------------------------------------------------------------------------
  // Sending

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
    ctx.scheduleRender();
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
    ctx.scheduleRender();
  }

  return {
    applyEvent,
    fetchConversation,
    loadHistory,
    requestSync,
    onSynced,
    sendMessage,
    flushOutbox,
    removeFromOutbox,
  };
}
