// People outside the viewer's organisation: how the client marks them, the disclosure
// notice, pending invitees, and the organisations a user's conversations belong to.
// Pure helpers over conversation objects (PROTOCOL.md): app.js owns the state.

import { el } from './dom.js';

export const EXTERNAL_NOTICE =
  'People outside your organisation are in this conversation. ' +
  'Sharing patient information here is a disclosure.';

/** The conversation belongs to another organisation (the viewer takes part as an external). */
export function hostedElsewhere(conv, myOrgId) {
  return Boolean(conv && conv.org_id && myOrgId && conv.org_id !== myOrgId);
}

export function invitees(conv) {
  return conv && Array.isArray(conv.invitees) ? conv.invitees : [];
}

/**
 * How a participant (or an event's sender) is marked for this viewer: null, or
 * `{text, title, kind}`. Externals are marked "external"; in a conversation hosted by
 * another organisation, that organisation's members carry its name.
 */
export function outsideMark(conv, person, { meId, myOrgId }) {
  if (!person || (meId && person.id === meId)) return null;
  if (person.kind === 'external') {
    return {
      kind: 'external',
      text: 'external',
      title: hostedElsewhere(conv, myOrgId)
        ? `Not a member of ${conv.org_name || 'the host organisation'}`
        : 'Outside your organisation',
    };
  }
  if (person.kind === 'member' && hostedElsewhere(conv, myOrgId)) {
    const org = conv.org_name || 'another organisation';
    return { kind: 'host', text: org, title: `Member of ${org}` };
  }
  return null;
}

export function markNode(mark) {
  if (!mark) return null;
  return el(
    'span',
    {
      class: `org-mark ${mark.kind}`,
      title: mark.title,
      'data-testid': mark.kind === 'external' ? 'external-mark' : 'org-mark',
    },
    mark.text,
  );
}

/** Anyone outside the viewer's organisation is in it, or invited to it. */
export function hasOutsiders(conv, { meId, myOrgId }) {
  if (!conv) return false;
  if (invitees(conv).length || hostedElsewhere(conv, myOrgId)) return true;
  const people = Array.isArray(conv.participants) ? conv.participants : [];
  return people.some((p) => p.kind === 'external' && p.id !== meId);
}

/** Some invitation has not gone yet (it goes with the first message). */
export function invitationsPending(conv) {
  return invitees(conv).some((i) => !i.invited);
}

export function inviteeLabel(invitee, hasMessages) {
  if (invitee.invited) return `${invitee.email} (invited)`;
  return hasMessages
    ? `${invitee.email} (invitation pending)`
    : `${invitee.email} (invitation goes with the first message)`;
}

/**
 * The header's list of people: names with their marks, then pending invitees.
 * @returns {Node[]}
 */
export function peopleNodes(conv, { meId, myOrgId, hasMessages }) {
  const parts = [];
  for (const p of Array.isArray(conv.participants) ? conv.participants : []) {
    const mine = meId && p.id === meId;
    const mark = outsideMark(conv, p, { meId, myOrgId });
    parts.push(
      el(
        'span',
        { class: 'person', 'data-testid': 'participant', 'data-kind': p.kind || '' },
        mine ? `${p.name || 'You'} (you)` : p.name || 'Unknown',
        mark ? ' ' : null,
        markNode(mark),
      ),
    );
  }
  for (const inv of invitees(conv)) {
    parts.push(
      el(
        'span',
        { class: 'person invitee', 'data-testid': 'invitee', 'data-invited': String(Boolean(inv.invited)) },
        inviteeLabel(inv, hasMessages),
      ),
    );
  }
  const out = [];
  parts.forEach((node, i) => {
    if (i) out.push(', ');
    out.push(node);
  });
  return out;
}

/** The inbox's marks for a conversation: its host organisation, or "external". */
export function inboxMarks(conv, { meId, myOrgId }) {
  if (hostedElsewhere(conv, myOrgId)) {
    const org = conv.org_name || 'another organisation';
    return [markNode({ kind: 'host', text: org, title: `Hosted by ${org}` })];
  }
  if (hasOutsiders(conv, { meId, myOrgId })) {
    return [markNode({ kind: 'external', text: 'external', title: 'People outside your organisation' })];
  }
  return [];
}

/**
 * Without a mail server the creator gets each invitee's link once (the POST answer):
 * read-only fields to copy it from, for the invitees still pending.
 * @param {Map<string, string>} links email -> link
 */
export function inviteLinkNodes(conv, links) {
  const rows = [];
  for (const inv of invitees(conv)) {
    const link = links && links.get(inv.email);
    if (!link) continue;
    const input = el('input', {
      type: 'text',
      readonly: true,
      value: link,
      class: 'copy-link',
      'aria-label': `Invitation link for ${inv.email}`,
      'data-testid': 'invite-link',
    });
    input.addEventListener('focus', () => input.select());
    rows.push(
      el(
        'div',
        { class: 'invite-link-row' },
        el('span', {}, `This server sends no mail: give ${inv.email} this link yourself.`),
        input,
      ),
    );
  }
  return rows;
}

/**
 * The organisations a user's conversations belong to: their own first, then the others
 * by name. `[{id, name, own}]`.
 */
export function organisations(convs, myOrg) {
  const others = new Map();
  for (const conv of convs) {
    if (!conv || !conv.org_id || (myOrg && conv.org_id === myOrg.id)) continue;
    if (!others.has(conv.org_id)) others.set(conv.org_id, conv.org_name || 'Another organisation');
  }
  const list = Array.from(others, ([id, name]) => ({ id, name, own: false }))
    .sort((a, b) => a.name.localeCompare(b.name));
  if (myOrg && myOrg.id) list.unshift({ id: myOrg.id, name: myOrg.name || 'Your organisation', own: true });
  return list;
}
