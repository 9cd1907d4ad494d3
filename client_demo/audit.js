// The audit trail, for admins: GET /admin/audit as a table (time, who, action, target,
// patient, address), newest first, with filters (since, actor, patient, action), "Load
// more" through the `next` cursor, and Export CSV (GET /admin/audit/export with the same
// filters, fetched with the Bearer token and saved as audit.csv).
// One module per view: app.js only opens and closes it.

import { el, saveBlob } from './dom.js';
import { sentence } from './patient-conv.js';

const $ = (id) => document.getElementById(id);

const PAGE = 100;

// The actions the server writes today (docs/protocol.md), offered as suggestions.
const ACTIONS = [
  'auth.login', 'auth.login_failed', 'conversation.read', 'conversation.sync', 'portal.view',
  'patient.read', 'patient.search', 'patient.create', 'patient.update', 'patient.import',
  'message.send', 'message.receive_sms', 'message.recall', 'message.retrieve', 'file.download',
  'file.retrieve', 'delivery.status', 'sms.opt_out', 'sms.opt_in', 'member.create',
  'member.update', 'team.add_member', 'team.remove_member', 'org.update', 'number.buy',
  'number.move', 'audit.export', 'retention.purge',
];

function fullTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso || '' : d.toLocaleString([], {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit',
  });
}

function detailsText(details) {
  if (!details || typeof details !== 'object') return '';
  return Object.entries(details)
    .map(([k, v]) => `${k}: ${typeof v === 'object' && v !== null ? JSON.stringify(v) : v}`)
    .join(' · ');
}

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {{ me: () => object | null, session: () => number, toast: (m: string) => void }} ctx
 */
export function createAuditView(api, ctx) {
  const pane = $('audit-pane');
  const body = $('audit-body');
  const exportButton = $('audit-export');
  let applied = {}; // the filters the table shows
  let next = null;
  let entries = [];
  let names = new Map(); // user id -> name, for the members of the organisation
  let generation = 0; // a newer load drops the answers of older ones

  const field = (id, label, attrs = {}) => [
    el('label', { for: id }, label),
    el('input', { id, autocomplete: 'off', spellcheck: 'false', ...attrs }),
  ];
  const form = el(
    'form',
    { class: 'audit-filters', 'aria-label': 'Filter the audit trail', 'data-testid': 'audit-filters' },
    el('div', {}, ...field('audit-since', 'Since', { type: 'datetime-local', step: 1, 'data-testid': 'audit-since' })),
    el('div', {}, ...field('audit-actor', 'Actor id', { maxlength: 32, 'data-testid': 'audit-actor' })),
    el('div', {}, ...field('audit-patient', 'Patient id', { maxlength: 32, 'data-testid': 'audit-patient' })),
    el('div', {}, ...field('audit-action', 'Action', {
      list: 'audit-actions', maxlength: 64, placeholder: 'any', 'data-testid': 'audit-action',
    })),
    el('datalist', { id: 'audit-actions' }, ACTIONS.map((a) => el('option', { value: a }))),
    el('div', { class: 'row' },
      el('button', { type: 'submit', class: 'primary', 'data-testid': 'audit-apply' }, 'Show'),
      el('button', { type: 'reset', 'data-testid': 'audit-clear' }, 'Clear')),
  );
  const status = el('p', { class: 'muted', role: 'status', 'data-testid': 'audit-status' });
  const rows = el('tbody', { 'data-testid': 'audit-rows' });
  const table = el(
    'table',
    { class: 'patients audit-table', 'data-testid': 'audit-table' },
    el('caption', { class: 'visually-hidden' }, 'Audit entries, newest first'),
    el('thead', {}, el('tr', {}, ['Time', 'Actor', 'Action', 'Target', 'Patient', 'IP', 'Details']
      .map((h) => el('th', { scope: 'col' }, h)))),
    rows,
  );
  const more = el('button', {
    type: 'button', 'data-testid': 'audit-more', hidden: true, onclick: () => load(applied, { more: true }),
  }, 'Load more');
  body.replaceChildren(form, status, el('div', { class: 'table-scroll' }, table), more);

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    load(readFilters());
  });
  // Clear: the fields empty first (after this event), then the whole trail again.
  form.addEventListener('reset', () => setTimeout(() => {
    if (!pane.hidden) load(readFilters());
  }, 0));
  exportButton.addEventListener('click', () => exportCsv());

  /** The form's filters as query parameters (the date/time input is local time). */
  function readFilters() {
    const filters = {};
    const since = $('audit-since').value;
    if (since) {
      const d = new Date(since);
      if (!Number.isNaN(d.getTime())) filters.since = d.toISOString();
    }
    const actor = $('audit-actor').value.trim();
    const patient = $('audit-patient').value.trim();
    const action = $('audit-action').value.trim();
    if (actor) filters.actor = actor;
    if (patient) filters.patient_id = patient;
    if (action) filters.action = action;
    return filters;
  }

  function row(e) {
    const actor = e.actor || {};
    const target = e.target || {};
    const name = actor.id ? names.get(actor.id) : null;
    return el(
      'tr',
      { 'data-testid': 'audit-row', 'data-action': e.action, 'data-entry-id': e.id },
      el('td', { class: 'nowrap' }, el('time', { datetime: e.at, title: e.at }, fullTime(e.at))),
      el('td', {}, actor.kind || '', name ? ` · ${name}` : '',
        actor.id ? el('span', { class: 'audit-id' }, actor.id) : null),
      el('td', { 'data-testid': 'audit-action-cell' }, e.action),
      el('td', {}, target.kind || '—', target.id ? el('span', { class: 'audit-id' }, target.id) : null),
      el('td', {}, e.patient_id ? el('span', { class: 'audit-id' }, e.patient_id) : '—'),
      el('td', { class: 'nowrap' }, e.ip || '—'),
      el('td', { class: 'audit-details' }, detailsText(e.details)),
    );
  }

  function render() {
    rows.replaceChildren(...entries.map(row));
    table.hidden = entries.length === 0;
    more.hidden = !next;
    status.textContent = entries.length
      ? `${entries.length} ${entries.length === 1 ? 'entry' : 'entries'}${next ? ', more to load' : ''}.`
      : 'No entries match these filters.';
  }

  async function load(filters, { more: nextPage = false } = {}) {
    const mine = ++generation;
    const session = ctx.session();
    const cursor = nextPage ? next : null;
    if (nextPage && !cursor) return;
    status.textContent = 'Loading…';
    more.disabled = true;
    try {
      const page = await api.request('GET', '/api/v1/admin/audit', {
        query: { ...filters, limit: PAGE, cursor },
      });
      if (mine !== generation || session !== ctx.session()) return;
      applied = filters;
      entries = nextPage ? entries.concat(page.items || []) : page.items || [];
      next = page.next || null;
      render();
    } catch (err) {
      if (mine !== generation || session !== ctx.session()) return;
      status.textContent = '';
      ctx.toast(`Could not load the audit trail: ${sentence(err.message)}`);
    } finally {
      if (mine === generation) more.disabled = false;
    }
  }

  async function exportCsv() {
    const filters = readFilters();
    if (JSON.stringify(filters) !== JSON.stringify(applied)) load(filters); // the table agrees
    exportButton.disabled = true;
    try {
      saveBlob(await api.blob('/api/v1/admin/audit/export', filters), 'audit.csv');
    } catch (err) {
      ctx.toast(`Could not export the audit trail: ${sentence(err.message)}`);
    } finally {
      exportButton.disabled = false;
    }
  }

  async function loadNames() {
    try {
      const members = await api.listAll('/api/v1/members');
      names = new Map(members.map((m) => [m.id, m.name]));
      if (entries.length) render();
    } catch {
      /* the ids alone still say who */
    }
  }

  return {
    open() {
      pane.hidden = false;
      $('audit-since').focus();
      loadNames();
      load(readFilters());
    },
    close() {
      pane.hidden = true;
    },
    /** At login and logout: nothing of the previous user's trail stays. */
    reset() {
      pane.hidden = true;
      generation += 1;
      form.reset();
      applied = {};
      entries = [];
      next = null;
      names = new Map();
      rows.replaceChildren();
      status.textContent = '';
      more.hidden = true;
    },
  };
}
