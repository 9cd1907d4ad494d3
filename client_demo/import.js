// The patient Import dialog (opened from the Directory): a CSV file, Upload, a progress bar
// driven by the socket's `job` frames (or by polling GET /jobs/<id> when no frame comes),
// then the report: counts and the rejected rows with their line and reason.
// app.js routes `job` frames here through `onJob`.

import { el } from './dom.js';
import { sentence } from './patient-conv.js';

const POLL_MS = 1000;
const FIELD_NAMES = {
  first_name: 'First name', last_name: 'Last name', dob: 'Date of birth', mrn: 'MRN',
  email: 'E-mail', phone: 'Phone',
};

/** A rejected row's reason, its field names in words ("dob is not a date" → "Date of birth is…"). */
export function reasonText(message) {
  return String(message || '')
    .split('; ')
    .map((part) => {
      const m = /^([a-z_]+)(\s|:)/.exec(part);
      return m && FIELD_NAMES[m[1]] ? FIELD_NAMES[m[1]] + part.slice(m[1].length) : sentence(part);
    })
    .join('; ');
}

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {{session: () => number, onFinished: (job: object) => void}} ctx
 */
export function createImportDialog(api, ctx) {
  let dialog = null;
  let parts = null;
  let job = null; // {id, lastFrameAt, finished}
  let poller = null;
  const early = new Map(); // job id -> latest frame, for frames that beat the POST's answer

  function build() {
    const file = el('input', {
      id: 'import-file', type: 'file', accept: '.csv,text/csv,text/plain', 'data-testid': 'import-file',
    });
    const submit = el('button', { type: 'submit', class: 'primary', 'data-testid': 'import-submit' }, 'Upload');
    const error = el('p', { class: 'error', role: 'alert', 'data-testid': 'import-error', hidden: true });
    const progress = el('progress', { class: 'import-progress', 'data-testid': 'import-progress', 'aria-label': 'Import progress', hidden: true });
    const status = el('p', { class: 'muted', role: 'status', 'data-testid': 'import-status' });
    const report = el('section', { class: 'import-report', 'data-testid': 'import-report', 'aria-label': 'Import report', hidden: true });
    const form = el(
      'form',
      { class: 'import-form' },
      el('label', { for: 'import-file' }, 'CSV file'),
      file,
      el('p', { class: 'hint' },
        'The first line names the columns: first_name, last_name, dob, mrn, email, phone. ',
        'Rows match existing patients by MRN, then phone, then e-mail.'),
      error,
      el('div', { class: 'row' }, submit),
    );
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      upload();
    });
    const closeButton = el('button', { type: 'button', 'data-testid': 'import-close', onclick: () => dialog.close() }, 'Close');
    dialog = el(
      'dialog',
      { class: 'modal', 'data-testid': 'import-dialog', 'aria-labelledby': 'import-title' },
      el('header', { class: 'modal-header' }, el('h2', { id: 'import-title' }, 'Import patients'),
        el('span', { class: 'spacer' }), closeButton),
      form,
      progress,
      status,
      report,
    );
    dialog.addEventListener('close', () => stopPolling());
    document.body.append(dialog);
    parts = { file, submit, error, progress, status, report, form };
  }

  function showError(message) {
    parts.error.textContent = sentence(message);
    parts.error.hidden = false;
  }

  async function upload() {
    const chosen = parts.file.files && parts.file.files[0];
    parts.error.hidden = true;
    if (!chosen) {
      showError('Choose a CSV file first.');
      return;
    }
    stopPolling();
    job = null;
    parts.report.hidden = true;
    parts.submit.disabled = true;
    parts.status.textContent = 'Uploading…';
    const session = ctx.session();
    const body = new FormData();
    body.append('file', chosen, chosen.name);
    let answer;
    try {
      answer = await api.request('POST', '/api/v1/patients/import', { body });
    } catch (err) {
      if (session !== ctx.session()) return;
      parts.submit.disabled = false;
      parts.status.textContent = '';
      const named = err.details && err.details.fields && err.details.fields.file;
      showError(err.status === 413 ? `The file is too large: ${err.message}` : err.message || named || 'Upload refused.');
      return;
    }
    if (session !== ctx.session()) return;
    job = { id: answer.job_id, lastFrameAt: Date.now(), finished: false, session };
    parts.progress.hidden = false;
    parts.progress.removeAttribute('value'); // indeterminate until the first count
    parts.status.textContent = 'Importing…';
    const seen = early.get(job.id);
    early.clear();
    if (seen) onJob(seen);
    if (!job.finished) poller = setInterval(pollIfQuiet, POLL_MS);
  }

  // The fallback: no frame for a second (socket down, or another node lost it).
  async function pollIfQuiet() {
    if (!job || job.finished || Date.now() - job.lastFrameAt < POLL_MS) return;
    const current = job;
    try {
      const data = await api.request('GET', `/api/v1/jobs/${encodeURIComponent(current.id)}`);
      if (job !== current || current.finished) return;
      showProgress(data);
      if (data.status !== 'running') finish(current, data);
    } catch {
      /* try again on the next tick */
    }
  }

  function stopPolling() {
    clearInterval(poller);
    poller = null;
  }

  function showProgress(j) {
    const done = Number(j.done) || 0;
    // `progress` is how far through the file (0..1); `total` only counts rows read so far.
    const fraction = j.status === 'running' ? Math.min(Number(j.progress) || 0, 1) : 1;
    parts.progress.max = 100;
    parts.progress.value = Math.round(fraction * 100);
    parts.progress.setAttribute('aria-valuetext',
      `${Math.round(fraction * 100)}%, ${done} rows handled`);
    parts.status.textContent = j.status === 'running'
      ? `Importing… ${Math.round(fraction * 100)}% (${done} rows handled)`
      : j.status === 'done' ? `Finished: ${done} rows handled.` : 'The import stopped.';
  }

  /** A `job` frame from the socket. */
  function onJob(frame) {
    if (!frame || !frame.id) return;
    if (!job || job.id !== frame.id) {
      early.set(frame.id, frame); // maybe ours, before the POST has answered
      if (early.size > 20) early.delete(early.keys().next().value);
      return;
    }
    if (job.finished) return;
    job.lastFrameAt = Date.now();
    showProgress(frame);
    if (frame.status !== 'running') finish(job);
  }

  async function finish(current, known) {
    current.finished = true;
    stopPolling();
    let full = known && Array.isArray(known.errors) ? known : null;
    if (!full) {
      try {
        full = await api.request('GET', `/api/v1/jobs/${encodeURIComponent(current.id)}`);
      } catch (err) {
        if (job === current) showError(`Could not read the report: ${err.message}`);
        return;
      }
    }
    if (job !== current || current.session !== ctx.session()) return;
    showProgress(full);
    renderReport(full);
    parts.submit.disabled = false;
    parts.file.value = '';
    ctx.onFinished(full);
  }

  function renderReport(j) {
    const counts = el(
      'dl',
      { class: 'import-counts' },
      el('div', {}, el('dt', {}, 'Created'), el('dd', { 'data-testid': 'import-created' }, String(j.created || 0))),
      el('div', {}, el('dt', {}, 'Updated'), el('dd', { 'data-testid': 'import-updated' }, String(j.updated || 0))),
      el('div', {}, el('dt', {}, 'Rejected'), el('dd', { 'data-testid': 'import-rejected' }, String(j.rejected || 0))),
    );
    const errors = Array.isArray(j.errors) ? j.errors : [];
    const nodes = [el('h3', {}, j.status === 'failed' ? 'Import stopped' : 'Import finished'), counts];
    if (j.message) nodes.push(el('p', { class: 'error', 'data-testid': 'import-message' }, sentence(j.message)));
    if (errors.length) {
      nodes.push(el(
        'table',
        { class: 'import-errors', 'data-testid': 'import-errors' },
        el('caption', {}, 'Rejected rows (line 1 is the header)'),
        el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Line'), el('th', { scope: 'col' }, 'Reason'))),
        el('tbody', {}, errors.map((e) => el(
          'tr',
          { 'data-testid': 'import-error-row', 'data-line': e.line },
          el('td', { 'data-testid': 'import-error-line' }, String(e.line)),
          el('td', { 'data-testid': 'import-error-message' }, reasonText(e.message)),
        ))),
      ));
      if (errors.length < (j.rejected || 0)) {
        nodes.push(el('p', { class: 'muted' }, `The first ${errors.length} of ${j.rejected} rejected rows are listed.`));
      }
    }
    parts.report.replaceChildren(...nodes);
    parts.report.hidden = false;
  }

  return {
    open() {
      if (!dialog) build();
      if (!job || job.finished) {
        parts.error.hidden = true;
        parts.report.hidden = true;
        parts.progress.hidden = true;
        parts.status.textContent = '';
        parts.submit.disabled = false;
        job = null;
      } else if (!poller) {
        poller = setInterval(pollIfQuiet, POLL_MS); // a running import: follow it again
      }
      if (!dialog.open) dialog.showModal();
      parts.file.focus();
    },
    onJob,
    reset() {
      stopPolling();
      job = null;
      early.clear();
      if (dialog && dialog.open) dialog.close();
    },
  };
}
