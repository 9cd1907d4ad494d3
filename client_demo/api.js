// HTTP side of the BloomText v1 contract (see PROTOCOL.md).

// Where the web client keeps its session token (sessionStorage), for every page.
export const TOKEN_KEY = 'bloomtext.token';

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

const MAX_PAGES = 50;

/**
 * @param {() => string | null} getToken
 * @param {() => void} onUnauthenticated called when an authenticated request answers 401
 */
export function createApi(getToken, onUnauthenticated) {
  // A FormData body goes as multipart (the browser sets its Content-Type); others as JSON.
  async function request(method, path, { body, auth = true, query } = {}) {
    const headers = { Accept: 'application/json' };
    const form = typeof FormData !== 'undefined' && body instanceof FormData;
    if (body !== undefined && !form) headers['Content-Type'] = 'application/json';
    const token = auth ? getToken() : null;
    if (token) headers.Authorization = `Bearer ${token}`;
    let url = path;
    if (query) {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) {
        if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
      }
      const qs = params.toString();
      if (qs) url += (url.includes('?') ? '&' : '?') + qs;
    }
    let res;
    try {
      res = await fetch(url, {
        method,
        headers,
        body: body === undefined || form ? body : JSON.stringify(body),
        credentials: 'same-origin',
        cache: 'no-store',
      });
    } catch {
      throw new ApiError(0, 'network', 'Cannot reach the server.');
    }
    if (res.status === 204) return null;
    let data = null;
    const text = await res.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!res.ok) {
      const err = (data && data.error) || {};
      if (res.status === 401 && token) onUnauthenticated?.();
      throw new ApiError(res.status, err.code || `http_${res.status}`,
        err.message || res.statusText || 'Request failed', err.details);
    }
    return data;
  }

  // Follows `next` cursors of a `{items, next}` list.
  async function listAll(path, query = {}) {
    const items = [];
    let cursor = null;
    for (let page = 0; page < MAX_PAGES; page++) {
      const data = await request('GET', path, { query: { ...query, cursor } });
      items.push(...((data && data.items) || []));
      cursor = data && data.next;
      if (!cursor) break;
    }
    return items;
  }

  return {
    request,
    listAll,
    login: (email, password) =>
      request('POST', '/api/v1/auth/login', { body: { email, password }, auth: false }),
    logout: () => request('POST', '/api/v1/auth/logout'),
    me: () => request('GET', '/api/v1/me'),
    conversations: () => listAll('/api/v1/conversations'),
    conversation: (id) => request('GET', `/api/v1/conversations/${encodeURIComponent(id)}`),
    events: (id, after, limit) =>
      request('GET', `/api/v1/conversations/${encodeURIComponent(id)}/events`, {
        query: { after, limit },
      }),
    markRead: (id, seq) =>
      request('POST', `/api/v1/conversations/${encodeURIComponent(id)}/read`, { body: { seq } }),
    members: () => listAll('/api/v1/members'),
    // `to`: targets such as {user_id} or {email} (a member, a known external, or an outside
    // address invited when the first message is sent), {patient_id} or {patient: {...}};
    // `extra`: {phone_number_id, channel} for a patient conversation.
    createConversation: (to, subject, extra = {}) =>
      request('POST', '/api/v1/conversations', {
        body: { to, ...(subject ? { subject } : {}), ...extra },
      }),
    invite: (token) =>
      request('GET', `/api/v1/invites/${encodeURIComponent(token)}`, { auth: false }),
    acceptInvite: (token, body) =>
      request('POST', `/api/v1/invites/${encodeURIComponent(token)}/accept`, { auth: false, body }),
    async fileBlob(fileId) {
      const token = getToken();
      let res;
      try {
        res = await fetch(`/api/v1/files/${encodeURIComponent(fileId)}`, {
          headers: token ? { Authorization: `Bearer ${token}` } : {},
          cache: 'no-store',
        });
      } catch {
        throw new ApiError(0, 'network', 'Cannot reach the server.');
      }
      if (!res.ok) throw new ApiError(res.status, `http_${res.status}`, 'File unavailable');
      return res.blob();
    },
  };
}
