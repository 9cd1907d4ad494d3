// Sending a file from the composer. The Attach button (a file input behind its label)
// stages one file for the open conversation; Send uploads it with the text typed in the
// box (POST /conversations/<id>/files, multipart `file`, `body`, `client_id`) and shows how
// far it got. A refusal (413 too large, 422 a type not accepted) is said in the toast and
// the file stays staged to try again, with the same client_id: the server never stores
// it twice. The staged file belongs to its conversation (`rec.upload`), so switching
// conversations neither loses it nor sends it to the wrong one.

import { el, formatSize } from './dom.js';
import { uuid } from './state.js';
import { $, show } from './ui.js';

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {object} state see state.js
 * @param {ReturnType<import('./sync.js').createSync>} sync
 * @param {{
 *   changed: () => void,
 *   restoreText: (rec: object, text: string) => void,
 *   toast: (m: string) => void,
 * }} ctx `changed` re-renders the conversation (and the Send button)
 */
export function createAttach(api, state, sync, ctx) {
  const input = $('attach-file');
  const box = $('attach-staged');

  function active() {
    return state.activeId ? state.convs.get(state.activeId) : null;
  }

  input.addEventListener('change', () => {
    const rec = active();
    const file = input.files && input.files[0];
    input.value = ''; // the same file chosen again fires `change` again
    if (!rec || !file) return;
    if (rec.upload && rec.upload.status === 'sending') {
      ctx.toast('A file is still being sent in this conversation.');
      return;
    }
    rec.upload = { file, client_id: uuid(), status: 'staged', loaded: 0, total: file.size };
    ctx.changed();
    $('composer').focus();
  });

  function render(rec) {
    const up = rec && rec.upload;
    const sig = up ? JSON.stringify([rec.id, up.client_id, up.status, up.loaded]) : '';
    if (box.dataset.sig === sig) return;
    box.dataset.sig = sig;
    show(box, Boolean(up));
    if (!up) {
      box.replaceChildren();
      delete box.dataset.status;
      return;
    }
    box.dataset.status = up.status;
    const name = up.file.name || 'file';
    const label = `${name} (${formatSize(up.file.size)})`;
    if (up.status === 'sending') {
      const pct = up.total ? Math.min(100, Math.round((100 * up.loaded) / up.total)) : 0;
      box.replaceChildren(
        el('span', { class: 'attach-name' }, `Sending ${label}… ${pct}%`),
        el('progress', { max: 100, value: pct, 'aria-label': `Sending ${name}` }),
      );
      return;
    }
    box.replaceChildren(
      el('span', { class: 'attach-name', 'data-testid': 'attach-name' }, `Attached: ${label}`),
      el('button', {
        type: 'button',
        class: 'link',
        'aria-label': `Remove ${name}`,
        'data-testid': 'attach-remove',
        onclick: () => {
          if (rec.upload === up && up.status !== 'sending') rec.upload = null;
          ctx.changed();
          $('composer').focus();
        },
      }, 'Remove'),
    );
  }

  function errorText(err) {
    if (err.status === 413) return `the file is too large (${err.message})`;
    return err.message || 'refused';
  }

  /** Uploads the staged file of `rec` with `body` (may be empty). */
  async function send(rec, body) {
    const up = rec.upload;
    if (!up || up.status === 'sending') return;
    const session = state.session;
    up.status = 'sending';
    up.loaded = 0;
    ctx.changed();
    const form = new FormData();
    if (body) form.append('body', body);
    form.append('client_id', up.client_id);
    form.append('file', up.file, up.file.name);
    const path = `/api/v1/conversations/${encodeURIComponent(rec.id)}/files`;
    try {
      const event = await api.upload(path, form, (loaded, total) => {
        up.loaded = loaded;
        up.total = total;
        if (state.activeId === rec.id) render(rec);
      });
      if (session !== state.session) return;
      if (rec.upload === up) rec.upload = null;
      if (event) sync.applyEvent(event);
    } catch (err) {
      if (session !== state.session) return;
      up.status = 'staged';
      if (body) ctx.restoreText(rec, body);
      ctx.toast(`Could not send ${up.file.name}: ${errorText(err)}`);
    }
    ctx.changed();
  }

  return {
    render,
    send,
    /** Whether Send has a file to send in `rec` (staged, not on its way). */
    ready: (rec) => Boolean(rec && rec.upload && rec.upload.status === 'staged'),
    busy: (rec) => Boolean(rec && rec.upload && rec.upload.status === 'sending'),
    reset() {
      box.dataset.sig = '';
      box.replaceChildren();
      show(box, false);
    },
  };
}
