// The "New conversation" box: a member of the organisation and/or email addresses (members,
// or people outside the organisation, who are invited when the first message is sent).
// app.js creates it once and hears back through `onCreated`.

import { el } from './dom.js';

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
    errNode.hidden = true;
  }

  async function submit(event) {
    event.preventDefault();
    errNode.hidden = true;
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
  form.addEventListener('submit', submit);

  return { open, close };
}
