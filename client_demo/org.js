// The organisation panel for admins: plan and seats, members (invite, deactivate), open
// invitations (how their mail fared; revoke, resend), teams.
// One module per view: app.js only opens and closes it.

import { el } from './dom.js';

const $ = (id) => document.getElementById(id);

/**
 * @param {{request: Function, listAll: Function}} api
 * @param {{me: () => object, toast: (m: string) => void}} ctx
 */
export function createOrgPanel(api, ctx) {
  const pane = $('org-pane');

  async function act(what, fn) {
    try {
      await fn();
    } catch (err) {
      ctx.toast(`${what}: ${err.message}`);
    }
    await refresh();
  }

  function renderPlan(org) {
    const seats = org.seats.limit == null
      ? `${org.seats.used} seats used`
      : `${org.seats.used} of ${org.seats.limit} seats used`;
    const box = el('div', { class: 'org-plan' },
      el('p', { 'data-testid': 'org-plan' }, `${org.plan[0].toUpperCase()}${org.plan.slice(1)} plan · ${seats}`));
    if (org.plan === 'free' && !org.trial_ends_at) {
      box.append(el('button', {
        type: 'button', 'data-testid': 'start-trial',
        onclick: () => act('Could not start the trial', () => api.request('POST', '/api/v1/org/trial')),
      }, 'Start the 7-day trial'));
    }
    return box;
  }

  function renderMembers(members) {
    const me = ctx.me();
    const list = el('ul', { class: 'org-list', 'data-testid': 'org-members' });
    for (const user of members.filter((u) => u.kind === 'member')) {
      const row = el('li', { 'data-testid': 'org-member', 'data-user-id': user.id },
        el('span', {}, `${user.name} · ${user.email || ''} · ${user.role}`));
      if (user.id !== me.id) {
        row.append(el('button', {
          type: 'button', 'data-testid': 'deactivate',
          onclick: () => {
            if (!window.confirm(`Deactivate ${user.name}? Their sessions end at once.`)) return;
            act('Could not deactivate', () =>
              api.request('PATCH', `/api/v1/members/${user.id}`, { body: { active: false } }));
          },
        }, 'Deactivate'));
      }
      list.append(row);
    }
    const result = el('p', { class: 'muted', 'data-testid': 'invite-result', role: 'status' });
    const form = el('form', { class: 'org-form', 'data-testid': 'invite-form' },
      el('label', { for: 'invite-email' }, 'Invite by email'),
      el('input', { id: 'invite-email', type: 'email', required: true, 'data-testid': 'invite-email' }),
      el('label', { for: 'invite-name' }, 'Name'),
      el('input', { id: 'invite-name', required: true, maxlength: 200, 'data-testid': 'invite-name' }),
      el('label', { for: 'invite-role' }, 'Role'),
      el('select', { id: 'invite-role' }, el('option', { value: 'member' }, 'Member'),
        el('option', { value: 'admin' }, 'Admin')),
      el('button', { type: 'submit', class: 'primary', 'data-testid': 'invite-submit' }, 'Send invitation'));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        const invitation = await api.request('POST', '/api/v1/members', {
          body: { email: $('invite-email').value, name: $('invite-name').value, role: $('invite-role').value },
        });
        await refresh();
        const note = $('invite-result-slot');
        note.textContent = invitation.link
          ? `This server sends no mail: give ${invitation.email} this link yourself: ${invitation.link}`
          : `Invitation sent to ${invitation.email}.`;
      } catch (err) {
        ctx.toast(`Could not invite: ${err.message}`);
      }
    });
    result.id = 'invite-result-slot';
    return el('section', { 'aria-labelledby': 'org-members-title' },
      el('h3', { id: 'org-members-title' }, 'Members'), list, form, result);
  }

  // What happened to each invitation's mail: a failed one is the admin's to fix.
  const DELIVERY = {
    held: 'waits for the first message',
    pending: 'sending…',
    sent: 'mail sent',
    logged: 'no mail server: pass the link on',
    failed: 'MAIL FAILED',
    cancelled: 'not sent',
  };

  function renderInvitations(invitations) {
    const list = el('ul', { class: 'org-list', 'data-testid': 'org-invitations' });
    for (const inv of invitations) {
      const failed = inv.delivery.status === 'failed';
      const state = inv.expired ? 'expired' : DELIVERY[inv.delivery.status] || inv.delivery.status;
      const row = el('li', { 'data-testid': 'org-invitation', class: failed ? 'failed' : '' },
        el('span', {}, `${inv.email} · ${inv.kind === 'external' ? 'outside contact' : inv.role} · `),
        el('span', { 'data-testid': 'invitation-status', title: inv.delivery.error || '' },
          failed && inv.delivery.error ? `${state} (${inv.delivery.error})` : state));
      if (inv.kind === 'member' && (failed || inv.expired)) {
        row.append(' ', el('button', {
          type: 'button', class: 'link', 'data-testid': 'invitation-resend',
          onclick: () => act('Could not resend', () => api.request('POST', '/api/v1/members', {
            body: { email: inv.email, name: inv.name || inv.email, role: inv.role },
          })),
        }, 'Resend'));
      }
      row.append(' ', el('button', {
        type: 'button', class: 'link', 'data-testid': 'invitation-revoke',
        onclick: () => act('Could not revoke', () => api.request('DELETE', `/api/v1/invitations/${inv.id}`)),
      }, 'Revoke'));
      list.append(row);
    }
    if (!invitations.length) list.append(el('li', { class: 'muted' }, 'No open invitations.'));
    return el('section', { 'aria-labelledby': 'org-invitations-title' },
      el('h3', { id: 'org-invitations-title' }, 'Invitations'), list);
  }

  function renderTeams(teams, members) {
    const list = el('ul', { class: 'org-list', 'data-testid': 'org-teams' });
    const people = members.filter((u) => u.kind === 'member');
    for (const team of teams) {
      const names = el('ul', { class: 'team-members' });
      for (const m of team.members) {
        names.append(el('li', { 'data-testid': 'team-member' }, m.name, ' ',
          el('button', {
            type: 'button', class: 'link', 'aria-label': `Remove ${m.name} from ${team.name}`,
            onclick: () => act('Could not remove', () =>
              api.request('DELETE', `/api/v1/teams/${team.id}/members/${m.id}`)),
          }, 'Remove')));
      }
      const pick = el('select', { 'aria-label': `Add to ${team.name}`, 'data-testid': 'team-add' },
        el('option', { value: '' }, 'Add a member…'),
        ...people.filter((p) => !team.members.some((m) => m.id === p.id))
          .map((p) => el('option', { value: p.id }, p.name)));
      pick.addEventListener('change', () => {
        if (!pick.value) return;
        act('Could not add', () => api.request('PUT', `/api/v1/teams/${team.id}/members/${pick.value}`));
      });
      list.append(el('li', { 'data-testid': 'org-team' }, el('strong', {}, team.name), names, pick));
    }
    const form = el('form', { class: 'org-form' },
      el('label', { for: 'team-name' }, 'New team'),
      el('input', { id: 'team-name', required: true, maxlength: 200, 'data-testid': 'team-name' }),
      el('button', { type: 'submit', 'data-testid': 'team-create' }, 'Create team'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const name = $('team-name').value;
      act('Could not create the team', () => api.request('POST', '/api/v1/teams', { body: { name } }));
    });
    return el('section', { 'aria-labelledby': 'org-teams-title' },
      el('h3', { id: 'org-teams-title' }, 'Teams'), list, form);
  }

  async function refresh() {
    const [org, members, invitations, teams] = await Promise.all([
      api.request('GET', '/api/v1/org'),
      api.listAll('/api/v1/members'),
      api.listAll('/api/v1/invitations'),
      api.request('GET', '/api/v1/teams'),
    ]);
    const note = $('invite-result-slot');
    const kept = note ? note.textContent : '';
    $('org-body').replaceChildren(renderPlan(org), renderMembers(members),
      renderInvitations(invitations), renderTeams(teams.items, members));
    $('invite-result-slot').textContent = kept;
  }

  return {
    async open() {
      pane.hidden = false;
      await refresh().catch((err) => ctx.toast(`Could not load the organisation: ${err.message}`));
    },
    close() {
      pane.hidden = true;
    },
  };
}
