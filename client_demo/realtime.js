// Websocket side of the BloomText v1 contract: connect, authenticate, keep alive,
// reconnect with capped exponential backoff. Message semantics live in app.js.

export const SUBPROTOCOL = 'bloomtext.v1.json';

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 30_000;
const AUTH_TIMEOUT_MS = 10_000;
const PING_EVERY_MS = 20_000;
const DEAD_AFTER_MS = 45_000; // no frame at all for this long: the connection is dead

export function websocketUrl(path = '/ws') {
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${window.location.host}${path}`;
}

export class Realtime {
  /**
   * @param {object} opts
   * @param {string} opts.url
   * @param {() => string | null} opts.getToken
   * @param {(frame: object) => void} opts.onReady
   * @param {(frame: object) => void} opts.onFrame every frame after `ready` (pong excluded)
   * @param {(state: string, info: object) => void} opts.onStatus
   * @param {() => void} opts.onAuthRejected close code 4001
   */
  constructor(opts) {
    this.opts = opts;
    this.ws = null;
    this.state = 'idle'; // idle | connecting | ready | waiting | rejected | stopped
    this.attempt = 0;
    this.refSeq = 0;
    this.stopped = true;
    this.retryTimer = null;
    this.authTimer = null;
    this.heartbeat = null;
    this.lastFrameAt = 0;
    this.retryAt = 0;
    this._online = () => {
      if (this.state === 'waiting') this.connect();
    };
  }

  get ready() {
    return this.state === 'ready' && this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  nextRef() {
    this.refSeq += 1;
    return this.refSeq;
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    window.addEventListener('online', this._online);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener('online', this._online);
    clearTimeout(this.retryTimer);
    this._clearConnectionTimers();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      this._detach(ws);
      try {
        ws.close(1000, 'bye');
      } catch {
        /* already closing */
      }
    }
    this._setState('stopped');
  }

  /** Connects now (also used to skip the remaining backoff delay). */
  connect() {
    clearTimeout(this.retryTimer);
    if (this.stopped) return;
    if (this.ws) return;
    let ws;
    try {
      ws = new WebSocket(this.opts.url, SUBPROTOCOL);
    } catch {
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    this._setState('connecting');
    ws.onopen = () => {
      if (ws !== this.ws) return;
      this.lastFrameAt = Date.now();
      ws.send(JSON.stringify({ type: 'auth', token: this.opts.getToken() }));
      this.authTimer = setTimeout(() => this._drop(ws), AUTH_TIMEOUT_MS);
    };
    ws.onmessage = (msg) => this._onMessage(ws, msg);
    ws.onclose = (ev) => this._onClose(ws, ev.code);
    ws.onerror = () => {
      /* a close event follows */
    };
  }

  /** Sends a frame; false when there is no authenticated connection. */
  send(frame) {
    if (!this.ready) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** Called by the owner after a 4001 turned out not to mean a revoked token. */
  retryLater() {
    if (this.stopped) return;
    this._scheduleReconnect();
  }

  _onMessage(ws, msg) {
    if (ws !== this.ws) return;
    this.lastFrameAt = Date.now();
    if (typeof msg.data !== 'string') return;
    let frame;
    try {
      frame = JSON.parse(msg.data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    if (this.state !== 'ready') {
      if (frame.type === 'ready') {
        clearTimeout(this.authTimer);
        this.attempt = 0;
        this._setState('ready');
        this._startHeartbeat(ws);
        this.opts.onReady(frame);
      } else if (frame.type === 'error') {
        this.opts.onFrame(frame);
      }
      return;
    }
    if (frame.type === 'pong') return;
    this.opts.onFrame(frame);
  }

  _onClose(ws, code) {
    if (ws !== this.ws) return;
    this.ws = null;
    this._detach(ws);
    this._clearConnectionTimers();
    if (this.stopped) return;
    if (code === 4001) {
      this._setState('rejected');
      this.opts.onAuthRejected?.();
      return;
    }
    this._scheduleReconnect();
  }

  // Gives up on a connection that looks dead without waiting for the closing handshake.
  _drop(ws) {
    if (ws !== this.ws) return;
    try {
      ws.close(1000, 'timeout');
    } catch {
      /* ignore */
    }
    this._onClose(ws, 1006);
  }

  _scheduleReconnect() {
    clearTimeout(this.retryTimer);
    const exp = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = Math.round(exp / 2 + (Math.random() * exp) / 2); // jitter in [exp/2, exp]
    this.attempt = Math.min(this.attempt + 1, 16);
    this.retryAt = Date.now() + delay;
    this._setState('waiting');
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  _startHeartbeat(ws) {
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => {
      if (ws !== this.ws) return;
      if (Date.now() - this.lastFrameAt > DEAD_AFTER_MS) {
        this._drop(ws);
        return;
      }
      this.send({ type: 'ping' });
    }, PING_EVERY_MS);
  }

  _clearConnectionTimers() {
    clearTimeout(this.authTimer);
    clearInterval(this.heartbeat);
    this.authTimer = null;
    this.heartbeat = null;
  }

  _detach(ws) {
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = null;
  }

  _setState(state) {
    this.state = state;
    this.opts.onStatus?.(state, { retryAt: this.retryAt, attempt: this.attempt });
  }
}
