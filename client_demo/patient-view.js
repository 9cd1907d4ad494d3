// What an open patient conversation adds to the conversation view: how the next messages
// reach the patient (with the switch to change it, and the plain-SMS warning), and the
// patient-viewed mark under the last staff message the patient saw in the portal.

import { el } from './dom.js';
import { CHANNELS, numberLabel, SMS_WARNING } from './patient-conv.js';
import { sortedEvents } from './state.js';
import { $, show } from './ui.js';

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {object} state see state.js
 * @param {{ render: () => void, toast: (m: string) => void }} ctx
 */
export function createPatientView(api, state, ctx) {
  // A patient conversation says how it reaches the patient; plain SMS warns about content.
  function renderChannelNotice(rec) {
    const node = $('channel-notice');
    if (rec.data.kind !== 'patient') {
      show(node, false);
      return;
    }
    const current = rec.data.channel || 'secure_sms';
    const channel = CHANNELS.find(([value]) => value === current);
    const number = state.numbers.find((n) => n.id === rec.data.phone_number_id);
    const how = `${channel ? channel[1] : current}${number ? ` from ${numberLabel(number)}` : ''}`;
    // "Normal SMS from …: the text itself is sent. Never include patient information."
    const warning = SMS_WARNING.slice(SMS_WARNING.indexOf(':') + 1);
    const text = current === 'sms' ? `${how}:${warning}` : `${how}.`;
    if (node.dataset.sig !== `${rec.id}|${text}`) {
      node.dataset.sig = `${rec.id}|${text}`;
      // Staff may switch how the next messages reach the patient.
      const select = el('select', {
        'aria-label': 'How the next messages reach the patient',
        'data-testid': 'channel-switch',
        onchange: (e) => switchChannel(rec, e.target.value, e.target),
      }, CHANNELS.map(([value, label]) => el('option', { value }, label)));
      select.value = current;
      node.replaceChildren(el('span', { 'data-testid': 'channel-text' }, text), ' ', select);
    }
    node.classList.toggle('plain', current !== 'sms');
    show(node, true);
  }

  async function switchChannel(rec, channel, select) {
    try {
      const updated = await api.request('PATCH', `/api/v1/conversations/${rec.id}`, { body: { channel } });
      rec.data.channel = updated.channel;
    } catch (err) {
      select.value = rec.data.channel || 'secure_sms';
      ctx.toast(err.message || 'Could not switch the channel');
    }
    ctx.render();
  }

  // The patient's mark goes under the last staff message they have viewed (portal receipt).
  function patientViewed(rec) {
    if (rec.data.kind !== 'patient') return null;
    const patient = (rec.data.participants || []).find((p) => p.kind === 'patient');
    const seq = patient ? rec.receipts.get(patient.id) || 0 : 0;
    if (!seq) return null;
    let last = null;
    for (const ev of sortedEvents(rec)) {
      if (ev.seq > seq) break;
      if (ev.kind === 'message' && ev.sender && ev.sender.kind !== 'patient') last = ev.id;
    }
    return last && { eventId: last, name: patient.name || 'The patient' };
  }

  return { renderChannelNotice, patientViewed };
}
