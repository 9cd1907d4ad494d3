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
    let res;
    try {
      res = await fetch(withQuery(path, query), {
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
    const text = await res.text();
    if (!res.ok) throw errorOf(res.status, res.statusText, text, token);
    try {
      return text ? JSON.parse(text) : null;
    } catch {
      return null;
    }
  }

  function withQuery(path, query) {
    if (!query) return path;
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
    }
    const qs = params.toString();
    return qs ? path + (path.includes('?') ? '&' : '?') + qs : path;
  }

  // The `{error}` of an answer that is not ok (the body as text), as an ApiError.
  function errorOf(status, statusText, text, token) {
    let err = {};
    try {
      err = (text && JSON.parse(text).error) || {};
    } catch {
      err = {};
    }
    if (status === 401 && token) onUnauthenticated?.();
    return new ApiError(status, err.code || `http_${status}`,
      err.message || statusText || 'Request failed', err.details);
  }

  /** GET of something to save (a file, an export): the Blob, with the Bearer token. */
  async function blob(path, query) {
    const token = getToken();
    let res;
    try {
      res = await fetch(withQuery(path, query), {
        headers: token ? { Authorization: `Bearer ${token}` } : {},
        credentials: 'same-origin',
        cache: 'no-store',
      });
    } catch {
      throw new ApiError(0, 'network', 'Cannot reach the server.');
    }
    if (!res.ok) throw errorOf(res.status, res.statusText, await res.text(), token);
    return res.blob();
  }

  /**
   * POST of a FormData with upload progress (fetch reports none): `onProgress(loaded, total)`
   * as the bytes go; resolves to the JSON answer, rejects with an ApiError.
   */
  function upload(path, form, onProgress) {
    const token = getToken();
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open('POST', path);
      xhr.setRequestHeader('Accept', 'application/json');
      if (token) xhr.setRequestHeader('Authorization', `Bearer ${token}`);
      if (onProgress) {
        xhr.upload.addEventListener('progress', (e) => {
          if (e.lengthComputable) onProgress(e.loaded, e.total);
        });
      }
      xhr.addEventListener('load', () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          try {
            resolve(xhr.responseText ? JSON.parse(xhr.responseText) : null);
          } catch {
            reject(new ApiError(xhr.status, 'invalid_response', 'The server answered something unexpected.'));
          }
        } else {
          reject(errorOf(xhr.status, xhr.statusText, xhr.responseText, token));
        }
      });
      // A server that refuses a large body early may close the connection mid-upload.
      xhr.addEventListener('error', () =>
        reject(new ApiError(0, 'network', 'The upload did not go through (is the file too large?).')));
      xhr.addEventListener('abort', () => reject(new ApiError(0, 'aborted', 'The upload was cancelled.')));
      xhr.send(form);
    });
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
    recall: (messageId) =>
      request('POST', `/api/v1/messages/${encodeURIComponent(messageId)}/recall`),
    // Files and exports need the Bearer header, so a plain link cannot fetch them.
    fileBlob: (fileId) => blob(`/api/v1/files/${encodeURIComponent(fileId)}`),
    blob,
    upload,
  };
}
