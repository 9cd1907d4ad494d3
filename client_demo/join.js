// The page behind an invitation link (/join/<token>): set a name and password, then in.
// A member invitation joins the inviting organisation. An external invitation (someone
// outside it, asked into a conversation) either creates the person's account and their
// own organisation, or, when they already have an account, asks for its password.
import { createApi, TOKEN_KEY } from './api.js';

const api = createApi(() => null, () => {});
const token = decodeURIComponent(location.pathname.split('/').pop() || '');
const $ = (id) => document.getElementById(id);

function showGone() {
  $('join-gone').hidden = false;
  $('join-form').hidden = true;
}

function showError(message) {
  $('join-error').textContent = message;
  $('join-error').hidden = false;
}

/** Fields for an external invitation: a new account with its organisation, or sign-in. */
function setUpExternal(invite) {
  $('join-intro').textContent = `${invite.org_name} invited you to a secure conversation.`;
  if (invite.account_exists) {
    $('join-account').hidden = false;
    $('join-name-field').hidden = true;
    $('join-name').required = false;
    $('join-password-label').textContent = 'Your BloomText password';
    $('join-password').autocomplete = 'current-password';
    $('join-password').removeAttribute('minlength');
    $('join-form').querySelector('[type=submit]').textContent = 'Sign in and join';
  } else {
    $('join-org-field').hidden = false;
    $('join-org').required = true;
  }
}

function acceptBody(invite) {
  const password = $('join-password').value;
  if (invite.kind !== 'external') return { name: $('join-name').value, password };
  if (invite.account_exists) return { password };
  return { name: $('join-name').value, password, org_name: $('join-org').value.trim() };
}

async function start() {
  let invite;
  try {
    invite = await api.invite(token);
  } catch {
    showGone();
    return;
  }
  if (invite.kind === 'external') setUpExternal(invite);
  else $('join-intro').textContent = `You are invited to ${invite.org_name}.`;
  $('join-email').value = invite.email;
  $('join-name').value = invite.name || '';
  $('join-form').hidden = false;
  const submit = $('join-form').querySelector('[type=submit]');
  $('join-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    $('join-error').hidden = true;
    submit.disabled = true;
    try {
      const session = await api.acceptInvite(token, acceptBody(invite));
      sessionStorage.setItem(TOKEN_KEY, session.token);
      const ids = Array.isArray(session.conversation_ids) ? session.conversation_ids : [];
      // app.js opens the conversation named by `#c=<id>`.
      location.replace(ids.length ? `/#c=${encodeURIComponent(ids[0])}` : '/');
    } catch (err) {
      submit.disabled = false;
      if (err.status === 404) {
        showGone();
        return;
      }
      if (err.status === 401 && invite.account_exists) {
        showError('Wrong password for this account.');
        return;
      }
      showError(err.message || 'Something went wrong; try again.');
    }
  });
}

start();
