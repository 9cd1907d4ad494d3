// The "New conversation" box: a member of the organisation and/or email addresses (members,
// or people outside the organisation, who are invited when the first message is sent); or,
// when the caller's teams have phone numbers, a patient (a phone or an address, the number
// and the channel). app.js creates it once and hears back through `onCreated`.

import { el } from './dom.js';
import { conversationFields, loadNumbers, sentence } from './patient-conv.js';

const $ = (id) => document.getElementById(id);

const OUTSIDE_NOTE =
  'People outside your organisation get an invitation by email when you send the first message.';
const OUTSIDE_BLOCKED =
  'Your organisation does not allow conversations with people outside it: ' +
  'only addresses of its members work here.';
const EMAIL = /^[^\s@,;<>"]+@[^\s@,;<>"]+\.[^\s@,;<>"]+$/;

/** Addresses typed in one field (commas, semicolons or spaces between them). */
export function parseEmails(text) {
  const emails = [];
  const bad = [];
  const seen = new Set();
  for (const raw of String(text || '').split(/[\s,;]+/)) {
    const email = raw.trim().replace(/^<|>$/g, '');
    if (!email) continue;
    if (!EMAIL.test(email)) {
      bad.push(email);
      continue;
    }
    const key = email.toLowerCase();
    if (seen.has(key)) continue;
    seen.add(key);
    emails.push(email);
  }
  return { emails, bad };
}

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {{
 *   me: () => object | null,
 *   policies: () => object | null,
 *   session: () => number,
 *   setMembers: (members: object[]) => void,
 *   onCreated: (conv: object) => Promise<void> | void,
 * }} ctx
 */
export function createNewConversation(api, ctx) {
  const form = $('new-conv-form');
  const select = $('new-conv-member');
  const emailsInput = $('new-conv-emails');
  const subject = $('new-conv-subject');
  const errNode = $('new-conv-error');
  const note = $('new-conv-note');
  const toggle = $('new-conv-toggle');
  const kind = $('new-conv-kind');
  const kindBox = $('new-conv-kind-box');
  const staffBox = $('new-conv-staff');
  const patientBox = $('new-conv-patient');
  const contact = $('new-conv-patient-contact');
  const firstName = $('new-conv-patient-first');
  const lastName = $('new-conv-patient-last');
  let patientFields = null; // number and channel selects, built from the numbers at each open

  function showKind() {
    const patient = kind.value === 'patient' && !kindBox.hidden;
    staffBox.hidden = patient;
    patientBox.hidden = !patient;
  }

  // The Patient option: only when the caller may use a number (none, or no plan: hidden).
  async function loadPatientOption(session) {
    const { numbers } = await loadNumbers(api);
    if (session !== ctx.session() || form.hidden) return;
    kindBox.hidden = !numbers.length;
    if (numbers.length) {
      const keep = patientFields ? [patientFields.number.value, patientFields.channel.value] : null;
      patientFields = conversationFields('new-conversation', numbers);
      if (keep && numbers.some((n) => n.id === keep[0])) patientFields.number.value = keep[0];
      if (keep) {
        patientFields.channel.value = keep[1];
        patientFields.warning.hidden = keep[1] !== 'sms';
      }
      $('new-conv-patient-fields').replaceChildren(...patientFields.nodes);
    } else {
      kind.value = 'staff';
    }
    showKind();
  }

  function showError(message) {
    const text = String(message || '');
    errNode.textContent = text.charAt(0).toUpperCase() + text.slice(1);
    errNode.hidden = false;
  }

  async function open() {
    form.hidden = false;
    errNode.hidden = true;
    toggle.setAttribute('aria-expanded', 'true');
    const policies = ctx.policies() || {};
    const blocked = policies.allow_external_contacts === false;
    note.textContent = blocked ? OUTSIDE_BLOCKED : OUTSIDE_NOTE;
    note.classList.toggle('blocked', blocked);
    select.replaceChildren(el('option', { value: '' }, 'Loading members…'));
    select.disabled = true;
    const session = ctx.session();
    loadPatientOption(session);
    try {
      const members = await api.members();
      if (session !== ctx.session()) return;
      ctx.setMembers(members);
      const me = ctx.me();
      const choices = members
        .filter((m) => !me || m.id !== me.id)
        .filter((m) => !m.kind || m.kind === 'member')
        .filter((m) => m.active !== false)
        .sort((a, b) => String(a.name || '').localeCompare(String(b.name || '')));
      select.replaceChildren(
        el('option', { value: '' }, choices.length ? 'Choose a member…' : 'No other members yet'),
        ...choices.map((m) =>
          el('option', { value: m.id }, m.email ? `${m.name || m.email} <${m.email}>` : m.name || m.id),
        ),
      );
      select.disabled = false;
      select.focus();
    } catch (err) {
      if (session !== ctx.session()) return;
      // Addresses still work without the member list.
      select.replaceChildren(el('option', { value: '' }, 'Members unavailable'));
      showError(err.status === 403 ? 'Only members of the organisation can list its members.' : err.message);
      emailsInput.focus();
    }
  }

  function close() {
    form.hidden = true;
    toggle.setAttribute('aria-expanded', 'false');
    subject.value = '';
    emailsInput.value = '';
    contact.value = '';
    firstName.value = '';
    lastName.value = '';
    kind.value = 'staff';
    kindBox.hidden = true;
    showKind();
    errNode.hidden = true;
  }

  async function submitPatient(event) {
    const typed = contact.value.trim();
    if (!typed) {
      showError('Type the patient’s phone number or e-mail address.');
      contact.focus();
      return;
    }
    const patient = typed.includes('@') ? { email: typed } : { phone: typed };
    if (firstName.value.trim()) patient.first_name = firstName.value.trim();
    if (lastName.value.trim()) patient.last_name = lastName.value.trim();
    const button = event.submitter || form.querySelector('[type=submit]');
    button.disabled = true;
    const session = ctx.session();
    try {
      const conv = await api.createConversation([{ patient }], subject.value.trim(), {
        phone_number_id: patientFields.number.value,
        channel: patientFields.channel.value,
      });
      if (session !== ctx.session()) return;
      close();
      await ctx.onCreated(conv);
    } catch (err) {
      // 422 names the fields (e.g. `channel` when the patient has no phone for SMS);
      // 403 when the caller's team does not own the number.
      const named = (err.details && err.details.fields) || {};
      const why = Object.entries(named).map(([k, v]) => `${k.replace(/^to\.patient\./, '')} ${v}`).join('; ');
      showError(why && !String(err.message).includes(why) ? `${sentence(err.message)} (${why})` : err.message);
    } finally {
      button.disabled = false;
    }
  }

  async function submit(event) {
    event.preventDefault();
    errNode.hidden = true;
    if (kind.value === 'patient' && !kindBox.hidden && patientFields) {
      await submitPatient(event);
      return;
    }
    const userId = select.value;
    const { emails, bad } = parseEmails(emailsInput.value);
    if (bad.length) {
      showError(`Not an email address: ${bad.join(', ')}`);
      emailsInput.focus();
      return;
    }
    if (!userId && !emails.length) {
      showError('Choose a member or type an email address.');
      return;
    }
    const to = [];
    if (userId) to.push({ user_id: userId });
    for (const email of emails) to.push({ email });
    const button = event.submitter || form.querySelector('[type=submit]');
    button.disabled = true;
    const session = ctx.session();
    try {
      const conv = await api.createConversation(to, subject.value.trim());
      if (session !== ctx.session()) return;
      close();
      await ctx.onCreated(conv);
    } catch (err) {
      // 403 forbidden: the organisation's policy keeps it to itself; the message says why.
      showError(err.message || 'Could not start the conversation.');
    } finally {
      button.disabled = false;
    }
  }

  toggle.addEventListener('click', () => {
    if (form.hidden) open();
    else close();
  });
  $('new-conv-cancel').addEventListener('click', close);
  kind.addEventListener('change', () => {
    errNode.hidden = true;
    showKind();
    (kind.value === 'patient' ? contact : select).focus();
  });
  form.addEventListener('submit', submit);

  return { open, close };
}
