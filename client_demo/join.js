// The page behind an invitation link (/join/<token>): set a name and password, then in.
import { createApi, TOKEN_KEY } from './api.js';

const api = createApi(() => null, () => {});
const token = decodeURIComponent(location.pathname.split('/').pop() || '');
const $ = (id) => document.getElementById(id);

function showGone() {
  $('join-gone').hidden = false;
  $('join-form').hidden = true;
}

async function start() {
  let invite;
  try {
    invite = await api.request('GET', `/api/v1/invites/${encodeURIComponent(token)}`, { auth: false });
  } catch {
    showGone();
    return;
  }
  $('join-intro').textContent = `You are invited to ${invite.org_name}.`;
  $('join-email').value = invite.email;
  $('join-name').value = invite.name || '';
  $('join-form').hidden = false;
  $('join-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    $('join-error').hidden = true;
    try {
      const session = await api.request('POST', `/api/v1/invites/${encodeURIComponent(token)}/accept`, {
        auth: false,
        body: { name: $('join-name').value, password: $('join-password').value },
      });
      sessionStorage.setItem(TOKEN_KEY, session.token);
      location.replace('/');
    } catch (err) {
      if (err.status === 404) {
        showGone();
        return;
      }
      $('join-error').textContent = err.message || 'Something went wrong; try again.';
      $('join-error').hidden = false;
    }
  });
}

start();
