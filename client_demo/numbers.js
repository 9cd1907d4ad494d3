// Phone numbers, for admins (opened from the Directory): search Twilio's local numbers by
// area code and buy one for a team; the numbers owned, with their team and "Move to".
// One module per view: app.js only opens and closes it.

import { el } from './dom.js';
import { loadNumbers, planNotice, sentence } from './patient-conv.js';

const $ = (id) => document.getElementById(id);

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {{
 *   me: () => object | null,
 *   session: () => number,
 *   toast: (m: string) => void,
 *   openOrg: () => void,
 *   onChanged: () => void,
 * }} ctx
 */
export function createNumbersPanel(api, ctx) {
  const pane = $('numbers-pane');
  const body = $('numbers-body');
  let owned = { numbers: [], teams: [] };
  let available = []; // [{number, locality, region}]
  let searched = '';

  const area = el('input', {
    id: 'numbers-area-code', inputmode: 'numeric', maxlength: 3, pattern: '[0-9]{3}', placeholder: '415',
    autocomplete: 'off', 'data-testid': 'numbers-area-code',
  });
  const searchButton = el('button', { type: 'submit', 'data-testid': 'numbers-search' }, 'Search');
  const searchError = el('p', { class: 'error', role: 'alert', 'data-testid': 'numbers-error', hidden: true });
  const searchForm = el(
    'form',
    { class: 'numbers-search', novalidate: true },
    el('label', { for: 'numbers-area-code' }, 'Area code'),
    el('div', { class: 'inline' }, area, searchButton),
  );
  const availableList = el('ul', { class: 'org-list', 'data-testid': 'numbers-available' });
  const ownedList = el('ul', { class: 'org-list', 'data-testid': 'numbers-owned' });
  const content = el(
    'div',
    { class: 'numbers-content' },
    el('section', { 'aria-labelledby': 'numbers-buy-title' },
      el('h3', { id: 'numbers-buy-title' }, 'Buy a number'),
      searchForm, searchError, availableList),
    el('section', { 'aria-labelledby': 'numbers-owned-title' },
      el('h3', { id: 'numbers-owned-title' }, 'Your numbers'),
      el('p', { class: 'hint' }, 'Everyone on a number’s team sees its patient conversations. Moving a number moves that access at once.'),
      ownedList),
  );

  function fail(message) {
    searchError.textContent = sentence(message);
    searchError.hidden = false;
  }

  searchForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    searchError.hidden = true;
    const code = area.value.trim();
    if (!/^\d{3}$/.test(code)) {
      fail('Type a three-digit area code, such as 415.');
      return;
    }
    searchButton.disabled = true;
    const session = ctx.session();
    try {
      const data = await api.request('GET', '/api/v1/phone-numbers/available', { query: { area_code: code } });
      if (session !== ctx.session()) return;
      available = (data && data.items) || [];
      searched = code;
    } catch (err) {
      available = [];
      searched = '';
      fail(err.message); // 503: Twilio down or not configured; the message says which
    } finally {
      searchButton.disabled = false;
    }
    renderAvailable();
  });

  function teamSelect(testid, label, selected, { placeholder } = {}) {
    const select = el('select', { 'aria-label': label, 'data-testid': testid },
      placeholder ? el('option', { value: '' }, placeholder) : null,
      owned.teams.map((t) => el('option', { value: t.id }, t.name)));
    if (selected) select.value = selected;
    return select;
  }

  function renderAvailable() {
    const rows = available.map((item) => {
      const pick = teamSelect('numbers-team', `Team for ${item.number}`, owned.teams.length === 1 ? owned.teams[0].id : '', {
        placeholder: 'Choose a team…',
      });
      const buy = el('button', { type: 'button', class: 'primary', 'data-testid': 'numbers-buy' }, 'Buy');
      buy.addEventListener('click', async () => {
        searchError.hidden = true;
        if (!pick.value) {
          fail(`Choose the team that gets ${item.number}.`);
          pick.focus();
          return;
        }
        buy.disabled = true;
        try {
          const bought = await api.request('POST', '/api/v1/phone-numbers', { body: { number: item.number, team_id: pick.value } });
          ctx.toast(`Bought ${bought.number}.`);
          available = available.filter((a) => a.number !== item.number);
          await refresh();
          ctx.onChanged();
        } catch (err) {
          fail(err.message); // 409: Twilio refused (no longer available); 503: Twilio down
          buy.disabled = false;
        }
      });
      const place = [item.locality, item.region].filter(Boolean).join(', ');
      return el('li', { 'data-testid': 'numbers-available-row', 'data-number': item.number },
        el('strong', {}, item.number), place ? el('span', { class: 'muted' }, place) : null, pick, buy);
    });
    if (!owned.teams.length && available.length) {
      rows.unshift(el('li', { class: 'muted' }, 'A number belongs to a team: create one in the Organisation panel first.'));
    }
    if (searched && !available.length) rows.push(el('li', { class: 'muted' }, `No number available in ${searched}.`));
    availableList.replaceChildren(...rows);
  }

  function renderOwned() {
    const rows = owned.numbers.map((n) => {
      const move = teamSelect('numbers-move', `Move ${n.number} to`, '', { placeholder: 'Move to…' });
      for (const option of move.options) if (option.value === n.team_id) option.disabled = true;
      move.addEventListener('change', async () => {
        const teamId = move.value;
        if (!teamId) return;
        const team = owned.teams.find((t) => t.id === teamId);
        if (!window.confirm(`Move ${n.number} to ${team ? team.name : 'that team'}? Its conversations go with it.`)) {
          move.value = '';
          return;
        }
        try {
          await api.request('PATCH', `/api/v1/phone-numbers/${encodeURIComponent(n.id)}`, { body: { team_id: teamId } });
          ctx.toast(`${n.number} now belongs to ${team ? team.name : 'the team'}.`);
          await refresh();
          ctx.onChanged();
        } catch (err) {
          ctx.toast(`Could not move ${n.number}: ${err.message}`);
          move.value = '';
        }
      });
      return el('li', { 'data-testid': 'numbers-owned-row', 'data-number': n.number },
        el('strong', {}, n.number),
        el('span', { 'data-testid': 'numbers-owned-team' }, n.team_name || 'no team'),
        move);
    });
    if (!rows.length) rows.push(el('li', { class: 'muted' }, 'No number yet.'));
    ownedList.replaceChildren(...rows);
  }

  async function refresh() {
    const session = ctx.session();
    const loaded = await loadNumbers(api);
    if (session !== ctx.session()) return;
    if (loaded.planRequired) {
      const me = ctx.me();
      body.replaceChildren(planNotice(loaded.error, {
        admin: Boolean(me && me.role === 'admin'), openOrg: ctx.openOrg, testid: 'numbers-plan',
      }));
      return;
    }
    if (loaded.error) ctx.toast(`Could not load the numbers: ${loaded.error.message}`);
    owned = loaded;
    if (!body.contains(content)) body.replaceChildren(content);
    renderOwned();
    renderAvailable();
  }

  function close() {
    pane.hidden = true;
  }

  $('numbers-close').addEventListener('click', close);

  return {
    async open() {
      pane.hidden = false;
      await refresh();
      if (body.contains(content)) area.focus();
    },
    close,
    reset() {
      close();
      available = [];
      searched = '';
      area.value = '';
      searchError.hidden = true;
      owned = { numbers: [], teams: [] };
      body.replaceChildren();
    },
  };
}
