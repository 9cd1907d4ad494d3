// What starting a patient conversation needs, shared by the Directory's "Message" and the
// New conversation box: the phone numbers (with their teams), the channel select with its
// warning for plain SMS, and the notice shown where a patient feature needs the trial.

import { el } from './dom.js';

export const SMS_WARNING = 'Normal SMS: the text itself is sent. Never include patient information.';

export const CHANNELS = [
  ['secure_sms', 'Secure SMS (a link only)'],
  ['secure_email', 'Secure email (a link only)'],
  ['sms', 'Normal SMS'],
];

/** Capitalised first letter: the server's messages start in lower case. */
export function sentence(text) {
  const s = String(text || '');
  return s.charAt(0).toUpperCase() + s.slice(1);
}

/**
 * The numbers the caller may use, each with its team's name:
 * `{numbers: [{id, number, team_id, team_name}], teams, planRequired, error}`.
 * A 402 is not an error here: the organisation has no patient features (yet).
 */
export async function loadNumbers(api) {
  try {
    const [numbers, teams] = await Promise.all([
      api.request('GET', '/api/v1/phone-numbers'),
      api.request('GET', '/api/v1/teams').catch(() => ({ items: [] })),
    ]);
    const names = new Map(((teams && teams.items) || []).map((t) => [t.id, t.name]));
    const items = ((numbers && numbers.items) || []).map((n) => ({
      ...n,
      team_name: names.get(n.team_id) || '',
    }));
    return { numbers: items, teams: (teams && teams.items) || [], planRequired: false, error: null };
  } catch (err) {
    return { numbers: [], teams: [], planRequired: err.status === 402, error: err };
  }
}

export function numberLabel(n) {
  return n.team_name ? `${n.number} · ${n.team_name}` : n.number;
}

/**
 * A number select, a channel select and the plain-SMS warning under it. `prefix` makes the
 * ids and data-testids (`${prefix}-number`, `${prefix}-channel`, `${prefix}-sms-warning`).
 */
export function conversationFields(prefix, numbers) {
  const number = el(
    'select',
    { id: `${prefix}-number`, 'data-testid': `${prefix}-number` },
    numbers.length
      ? numbers.map((n) => el('option', { value: n.id }, numberLabel(n)))
      : el('option', { value: '' }, 'No phone number for your teams'),
  );
  number.disabled = !numbers.length;
  const channel = el(
    'select',
    { id: `${prefix}-channel`, 'data-testid': `${prefix}-channel`, 'aria-describedby': `${prefix}-sms-warning` },
    CHANNELS.map(([value, label]) => el('option', { value }, label)),
  );
  const warning = el(
    'p',
    { id: `${prefix}-sms-warning`, class: 'sms-warning', role: 'note', 'data-testid': `${prefix}-sms-warning`, hidden: true },
    SMS_WARNING,
  );
  channel.addEventListener('change', () => {
    warning.hidden = channel.value !== 'sms';
  });
  const nodes = [
    el('label', { for: `${prefix}-number` }, 'From number'),
    number,
    el('label', { for: `${prefix}-channel` }, 'Channel'),
    channel,
    warning,
  ];
  return { nodes, number, channel, warning };
}

/**
 * Where a patient feature would be, on the free plan: the server's message, and how to
 * start the trial (admins: a button that opens the Organisation panel).
 */
export function planNotice(err, { admin, openOrg, testid = 'plan-required' }) {
  return el(
    'div',
    { class: 'plan-notice', role: 'note', 'data-testid': testid },
    el('p', {}, sentence(err && err.message ? err.message : 'Patient features need the trial or a paid plan.'), '.'),
    el('p', { class: 'muted' }, 'Hint: Organisation → “Start the 7-day trial”.'),
    admin
      ? el(
          'button',
          { type: 'button', 'data-testid': `${testid}-org`, onclick: () => openOrg() },
          'Open the Organisation panel',
        )
      : el('p', { class: 'muted' }, 'Only an admin of your organisation can start it.'),
  );
}
