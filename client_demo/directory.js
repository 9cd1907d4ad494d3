// The patient Directory: search as you type, the list (archived ones on request), the
// add/edit form with Archive/Restore, and "Message" to start a patient conversation.
// One module per view: app.js only opens and closes it.

import { el } from './dom.js';
import { conversationFields, loadNumbers, planNotice, sentence } from './patient-conv.js';

const $ = (id) => document.getElementById(id);

const SEARCH_DELAY_MS = 250;
const PAGE = 50;

// The form's fields, in order: [field, label, input attributes].
const FIELDS = [
  ['first_name', 'First name', { autocomplete: 'off', maxlength: 200 }],
  ['last_name', 'Last name', { autocomplete: 'off', maxlength: 200 }],
  ['dob', 'Date of birth', { type: 'date' }],
  ['mrn', 'MRN', { autocomplete: 'off', maxlength: 64 }],
  ['phone', 'Phone', { type: 'tel', autocomplete: 'off', placeholder: '(415) 555-0123' }],
  ['email', 'E-mail address', { type: 'email', autocomplete: 'off' }],
];
const LABELS = Object.fromEntries(FIELDS.map(([f, label]) => [f, label]));

export function patientName(p) {
  const name = [p.first_name, p.last_name].filter(Boolean).join(' ');
  return name || p.phone || p.email || p.mrn || 'Unnamed patient';
}

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {{
 *   me: () => object | null,
 *   session: () => number,
 *   toast: (m: string) => void,
 *   openOrg: () => void,
 *   openNumbers: () => void,
 *   openImport: () => void,
 *   onConversation: (conv: object) => Promise<void> | void,
 * }} ctx
 */
export function createDirectory(api, ctx) {
  const pane = $('directory-pane');
  const body = $('directory-body');
  const view = {
    q: '',
    archived: false,
    items: [],
    next: null,
    seq: 0, // search requests: a late answer to an old query is dropped
    timer: null,
    editing: null, // null: no form; {}: a new patient; a patient: its edit form
    messaging: null, // the patient whose "Message" form is open
    planError: null,
  };

  const search = el('input', {
    id: 'directory-search', type: 'search', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'Name, MRN, phone, e-mail or date of birth', 'data-testid': 'directory-search',
  });
  const showArchived = el('input', { id: 'directory-archived', type: 'checkbox', 'data-testid': 'directory-show-archived' });
  const toolbar = el(
    'div',
    { class: 'directory-toolbar' },
    el('label', { for: 'directory-search', class: 'visually-hidden' }, 'Search patients'),
    search,
    el('label', { class: 'check' }, showArchived, ' Show archived'),
    el('button', {
      type: 'button', class: 'primary', 'data-testid': 'patient-add',
      onclick: () => openForm({}),
    }, 'Add patient'),
  );
  const formSlot = el('div', { class: 'directory-form-slot' });
  const status = el('p', { class: 'muted', role: 'status', 'data-testid': 'directory-status' });
  const table = el('table', { class: 'patients', 'data-testid': 'patient-list' });
  const more = el('button', {
    type: 'button', 'data-testid': 'patient-more', hidden: true, onclick: () => load({ append: true }),
  }, 'Show more');
  const main = el('div', { class: 'directory-main' }, toolbar, formSlot, status, table, more);
  const planSlot = el('div', {});

  search.addEventListener('input', () => {
    clearTimeout(view.timer);
    view.timer = setTimeout(() => {
      view.q = search.value.trim();
      load();
    }, SEARCH_DELAY_MS);
  });
  showArchived.addEventListener('change', () => {
    view.archived = showArchived.checked;
    load();
  });

  async function load({ append = false } = {}) {
    const seq = ++view.seq;
    const session = ctx.session();
    try {
      const data = await api.request('GET', '/api/v1/patients', {
        query: {
          q: view.q, archived: view.archived ? 'true' : 'false', limit: PAGE,
          cursor: append ? view.next : null,
        },
      });
      if (seq !== view.seq || session !== ctx.session()) return;
      view.planError = null;
      view.items = append ? view.items.concat(data.items || []) : data.items || [];
      view.next = data.next || null;
    } catch (err) {
      if (seq !== view.seq || session !== ctx.session()) return;
      if (err.status === 402) {
        view.planError = err;
        view.items = [];
      } else {
        ctx.toast(`Could not search the directory: ${err.message}`);
      }
    }
    render();
  }

  function render() {
    const me = ctx.me();
    const admin = Boolean(me && me.role === 'admin');
    $('directory-numbers').hidden = !admin || Boolean(view.planError);
    $('directory-import').hidden = Boolean(view.planError);
    if (view.planError) {
      planSlot.replaceChildren(planNotice(view.planError, { admin, openOrg: ctx.openOrg, testid: 'directory-plan' }));
      body.replaceChildren(planSlot);
      return;
    }
    if (!body.contains(main)) body.replaceChildren(main);
    const rows = view.items.map((p) => patientRow(p));
    table.replaceChildren(
      el('thead', {}, el('tr', {}, ['Name', 'Date of birth', 'MRN', 'Phone', 'E-mail', ''].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows),
    );
    table.hidden = !view.items.length;
    more.hidden = !view.next;
    status.textContent = view.items.length
      ? ''
      : view.q
        ? `No patient matches “${view.q}”.`
        : 'No patients yet: add one, or import a CSV file.';
  }

  function patientRow(p) {
    const archived = Boolean(p.archived);
    const row = el(
      'tr',
      { 'data-testid': 'patient-row', 'data-patient-id': p.id, class: archived ? 'archived' : '' },
      el('td', { 'data-testid': 'patient-name' }, patientName(p),
        archived ? el('span', { class: 'tag', 'data-testid': 'patient-archived' }, 'archived') : null,
        p.unverified ? el('span', { class: 'tag', title: 'Created from an inbound SMS' }, 'unverified') : null),
      el('td', { 'data-testid': 'patient-dob-cell' }, p.dob || ''),
      el('td', { 'data-testid': 'patient-mrn-cell' }, p.mrn || ''),
      el('td', { 'data-testid': 'patient-phone-cell' }, p.phone || ''),
      el('td', { 'data-testid': 'patient-email-cell' }, p.email || ''),
      el(
        'td',
        { class: 'actions' },
        el('button', { type: 'button', class: 'link', 'data-testid': 'patient-edit', onclick: () => openForm(p) }, 'Edit'),
        archived
          ? null
          : el('button', { type: 'button', class: 'link', 'data-testid': 'patient-message', onclick: () => openMessage(p) }, 'Message'),
      ),
    );
    return row;
  }

  // --- Add / edit form ----------------------------------------------------------------

  function openForm(patient) {
    view.editing = patient;
    view.messaging = null;
    const isNew = !patient.id;
    const inputs = {};
    const errors = {};
    const fieldNodes = FIELDS.map(([field, label, attrs]) => {
      const input = el('input', {
        id: `patient-${field}`, name: field, ...attrs, 'data-testid': `patient-${field}`,
        'aria-describedby': `patient-${field}-error`,
        value: patient[field] || null,
      });
      const error = el('p', { id: `patient-${field}-error`, class: 'field-error', 'data-testid': `patient-${field}-error`, hidden: true });
      inputs[field] = input;
      errors[field] = error;
      return el('div', { class: 'field' }, el('label', { for: `patient-${field}` }, label), input, error);
    });
    const formError = el('p', { class: 'error', role: 'alert', 'data-testid': 'patient-form-error', hidden: true });
    const save = el('button', { type: 'submit', class: 'primary', 'data-testid': 'patient-save' }, isNew ? 'Add patient' : 'Save');
    const buttons = el('div', { class: 'row' }, save,
      el('button', { type: 'button', 'data-testid': 'patient-cancel', onclick: closeForm }, 'Cancel'));
    if (!isNew) {
      buttons.append(patient.archived
        ? el('button', { type: 'button', 'data-testid': 'patient-restore', onclick: () => setArchived(patient, false) }, 'Restore')
        : el('button', { type: 'button', class: 'danger', 'data-testid': 'patient-archive', onclick: () => setArchived(patient, true) }, 'Archive'));
    }
    const form = el(
      'form',
      { class: 'patient-form', 'data-testid': 'patient-form', novalidate: true, 'aria-labelledby': 'patient-form-title' },
      el('h3', { id: 'patient-form-title' }, isNew ? 'Add a patient' : `Edit ${patientName(patient)}`),
      el('p', { class: 'hint' }, 'A phone or an e-mail address is required. A phone without a country code takes the server’s default region (US unless set).'),
      el('div', { class: 'fields' }, fieldNodes),
      formError,
      buttons,
    );
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      for (const node of Object.values(errors)) node.hidden = true;
      formError.hidden = true;
      const values = {};
      for (const [field] of FIELDS) {
        const v = inputs[field].value.trim();
        if (isNew) {
          if (v) values[field] = v;
        } else if (v !== (patient[field] || '')) {
          values[field] = v || null; // empty clears
        }
      }
      if (!isNew && !Object.keys(values).length) {
        closeForm();
        return;
      }
      save.disabled = true;
      try {
        const saved = isNew
          ? await api.request('POST', '/api/v1/patients', { body: values })
          : await api.request('PATCH', `/api/v1/patients/${encodeURIComponent(patient.id)}`, { body: values });
        closeForm();
        ctx.toast(isNew ? `Added ${patientName(saved)}.` : `Saved ${patientName(saved)}.`);
        showSaved(saved);
      } catch (err) {
        const fields = (err.details && err.details.fields) || {};
        let shown = false;
        for (const [field, message] of Object.entries(fields)) {
          const node = errors[field];
          if (!node) continue;
          node.textContent = fieldMessage(field, message);
          node.hidden = false;
          inputs[field].setAttribute('aria-invalid', 'true');
          if (!shown) inputs[field].focus();
          shown = true;
        }
        if (!shown) {
          formError.textContent = sentence(err.message || 'Could not save the patient.');
          formError.hidden = false;
        }
      } finally {
        save.disabled = false;
      }
    });
    for (const input of Object.values(inputs)) {
      input.addEventListener('input', () => input.removeAttribute('aria-invalid'));
    }
    formSlot.replaceChildren(form);
    inputs.first_name.focus();
  }

  function fieldMessage(field, message) {
    const text = String(message || 'is not valid');
    if (text === 'taken') return `${LABELS[field]}: another patient already has it.`;
    const end = /[.!]$/.test(text) ? '' : '.';
    // "is in the future" reads on from the label; anything else follows a colon.
    return /^(is|must|has|needs) /.test(text) ? `${LABELS[field]} ${text}${end}` : `${LABELS[field]}: ${text}${end}`;
  }

  function closeForm() {
    view.editing = null;
    view.messaging = null;
    formSlot.replaceChildren();
  }

  // After a save: the list shows the patient (searched by a field that finds it).
  function showSaved(patient) {
    const i = view.items.findIndex((p) => p.id === patient.id);
    if (i >= 0) {
      if (patient.archived && !view.archived) view.items.splice(i, 1);
      else view.items[i] = patient;
      render();
    } else if (!view.q) {
      load();
    } else {
      render();
    }
  }

  async function setArchived(patient, archived) {
    if (archived && !window.confirm(`Archive ${patientName(patient)}? They leave the directory until restored.`)) return;
    try {
      const saved = await api.request('PATCH', `/api/v1/patients/${encodeURIComponent(patient.id)}`, { body: { archived } });
      closeForm();
      ctx.toast(archived ? `Archived ${patientName(saved)}.` : `Restored ${patientName(saved)}.`);
      showSaved(saved);
    } catch (err) {
      ctx.toast(`Could not ${archived ? 'archive' : 'restore'}: ${err.message}`);
    }
  }

  // --- Message a patient ----------------------------------------------------------------

  async function openMessage(patient) {
    view.editing = null;
    view.messaging = patient;
    formSlot.replaceChildren(el('p', { class: 'muted' }, 'Loading phone numbers…'));
    const session = ctx.session();
    const { numbers, error } = await loadNumbers(api);
    if (session !== ctx.session() || view.messaging !== patient) return;
    const fields = conversationFields('message', numbers);
    if (!patient.phone) fields.channel.value = 'secure_email';
    const subject = el('input', { id: 'message-subject', maxlength: 200, 'data-testid': 'message-subject' });
    const errNode = el('p', { class: 'error', role: 'alert', 'data-testid': 'message-error', hidden: !error });
    if (error) errNode.textContent = sentence(error.message);
    else if (!numbers.length) {
      errNode.textContent = 'None of your teams has a phone number: an admin buys one under Phone numbers.';
      errNode.hidden = false;
    }
    const start = el('button', { type: 'submit', class: 'primary', 'data-testid': 'message-submit', disabled: !numbers.length }, 'Start conversation');
    const form = el(
      'form',
      { class: 'patient-form', 'data-testid': 'patient-message-form', 'aria-labelledby': 'message-title' },
      el('h3', { id: 'message-title' }, `Message ${patientName(patient)}`),
      el('p', { class: 'hint' }, [patient.phone, patient.email].filter(Boolean).join(' · ')),
      fields.nodes,
      el('label', { for: 'message-subject' }, 'Subject (optional)'),
      subject,
      errNode,
      el('div', { class: 'row' }, start,
        el('button', { type: 'button', 'data-testid': 'message-cancel', onclick: closeForm }, 'Cancel')),
    );
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      errNode.hidden = true;
      start.disabled = true;
      try {
        const conv = await api.createConversation([{ patient_id: patient.id }], subject.value.trim(), {
          phone_number_id: fields.number.value, channel: fields.channel.value,
        });
        if (session !== ctx.session()) return;
        closeForm();
        close();
        await ctx.onConversation(conv);
      } catch (err) {
        const named = (err.details && err.details.fields) || {};
        const why = Object.entries(named).map(([k, v]) => `${k}: ${v}`).join('; ');
        errNode.textContent = sentence(err.message) + (why && !err.message.includes(why) ? ` (${why})` : '');
        errNode.hidden = false;
      } finally {
        start.disabled = !numbers.length;
      }
    });
    formSlot.replaceChildren(form);
    fields.number.focus();
  }

  function close() {
    pane.hidden = true;
    clearTimeout(view.timer);
  }

  $('directory-close').addEventListener('click', close);
  $('directory-import').addEventListener('click', () => ctx.openImport());
  $('directory-numbers').addEventListener('click', () => ctx.openNumbers());

  return {
    async open() {
      pane.hidden = false;
      if (!body.childElementCount) body.replaceChildren(main);
      await load();
      if (!view.planError && !view.editing && !view.messaging) search.focus();
    },
    close,
    /** After an import or a plan change: search again. */
    refresh() {
      if (!pane.hidden) load();
    },
    reset() {
      close();
      closeForm();
      view.q = '';
      view.archived = false;
      view.items = [];
      view.next = null;
      view.planError = null;
      search.value = '';
      showArchived.checked = false;
      body.replaceChildren();
    },
  };
}
