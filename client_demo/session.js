// Signing in and out: the login form, the token in sessionStorage (one per tab), loading
// the inbox when a session starts, and the way back to the login form when the server no
// longer knows the token.

import { ApiError, TOKEN_KEY } from './api.js';
import { conversationFromHash } from './conversation.js';
import { upsertConversation } from './state.js';
import { $, setText, show } from './ui.js';

export function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function writeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage unavailable: the token lives in memory only */
  }
}

/**
 * @param {ReturnType<import('./api.js').createApi>} api
 * @param {object} state see state.js
 * @param {import('./realtime.js').Realtime} rt
 * @param {{
 *   reset: () => void,
 *   render: () => void,
 *   renderStatus: (s: string) => void,
 *   toast: (m: string) => void,
 *   loadInboxNumbers: () => void,
 *   openConversation: (id: string, opts?: {focus?: boolean}) => void,
 * }} ctx `reset` forgets the previous user's state and views (app.js)
 */
export function createSession(api, state, rt, ctx) {
  function showLogin() {
    show($('app-view'), false);
    show($('login-view'), true);
    $('login-email').focus();
  }

  function showApp() {
    show($('login-view'), false);
    show($('app-view'), true);
  }

  async function startSession() {
    const session = state.session;
    showApp();
    ctx.renderStatus('idle');
    ctx.render();
    try {
      if (!state.me) {
        const me = await api.me();
        if (session !== state.session) return;
        state.me = me.user;
        state.org = me.org;
        state.policies = me.policies || null;
      }
      const convs = await api.conversations();
      if (session !== state.session) return;
      // The inbox comes most recent first: keep that order below anything live.
      convs.forEach((conv, i) => {
        const rec = upsertConversation(state, conv, { fresh: false });
        if (rec) rec.touched = -i;
      });
    } catch (err) {
      if (session !== state.session) return;
      if (err instanceof ApiError && err.status === 401) return; // handled: back to login
      ctx.toast(`Could not load the inbox: ${err.message}`);
    }
    ctx.render();
    rt.start();
    ctx.loadInboxNumbers();
    const fromHash = conversationFromHash();
    if (fromHash && state.convs.has(fromHash)) ctx.openConversation(fromHash, { focus: false });
  }

  function handleUnauthenticated() {
    if (!state.token) return;
    rt.stop();
    state.token = null;
    writeToken(null);
    ctx.reset();
    window.history.replaceState(null, '', window.location.pathname);
    showLogin();
    const err = $('login-error');
    setText(err, 'Your session has ended. Please log in again.');
    show(err, true);
  }

  async function logout() {
    if (state.outbox.length && !window.confirm('Some messages are not sent yet. Log out anyway?')) {
      return;
    }
    rt.stop();
    try {
      await api.logout();
    } catch {
      /* the token is dropped locally either way */
    }
    state.token = null;
    writeToken(null);
    ctx.reset();
    window.history.replaceState(null, '', window.location.pathname);
    $('login-password').value = '';
    show($('login-error'), false);
    showLogin();
  }

  async function onLoginSubmit(event) {
    event.preventDefault();
    const email = $('login-email').value.trim();
    const password = $('login-password').value;
    const errNode = $('login-error');
    const button = $('login-submit');
    show(errNode, false);
    if (!email || !password) {
      setText(errNode, 'Enter your email and password.');
      show(errNode, true);
      return;
    }
    button.disabled = true;
    try {
      const res = await api.login(email, password);
      ctx.reset();
      state.token = res.token;
      writeToken(res.token);
      state.me = res.user || null;
      $('login-password').value = '';
      await startSession();
    } catch (err) {
      let message = err.message || 'Login failed.';
      if (err.status === 401) message = 'Wrong email or password.';
      else if (err.status === 429) message = 'Too many attempts. Try again in a moment.';
      setText(errNode, message);
      show(errNode, true);
    } finally {
      button.disabled = false;
    }
  }

  $('login-form').addEventListener('submit', onLoginSubmit);
  $('logout').addEventListener('click', logout);

  return {
    start: startSession,
    showLogin,
    /** A 401 over HTTP (or a revoked token on the socket): back to the login form. */
    handleUnauthenticated,
  };
}
