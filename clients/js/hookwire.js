// Hookwire JavaScript client: protocol v1 (see broker/docs/protocol.md) over
// WebTransport or WebSocket. A dependency-free ES module for browsers and Node 20
// (Node 20 has no global WebSocket: pass one, e.g. from the `ws` package).

const SUBPROTOCOL = 'hookwire.v1';
const CHANNEL_RE = /^[A-Za-z0-9_.:@/=-]{1,255}$/;
// setTimeout fires at once for delays past 2^31-1 ms; long waits are done in steps.
const MAX_TIMER_MS = 2 ** 31 - 1;
// Close codes whose table entry says "stop": everything else reconnects.
const STOP_CODES = new Set([1000, 4003]);
// Subscribe errors worth retrying on the same connection; any other ends the subscription.
const TRANSIENT_CODES = new Set(['rate_limited', 'unavailable', 'internal', 'timeout']);
const encoder = new TextEncoder();

/** An Error with a machine-readable `code`: a server error code or a client one. */
export class HookwireError extends Error {
  constructor(code, message, extra) {
    super(message);
    this.name = 'HookwireError';
    this.code = code;
    if (extra) Object.assign(this, extra);
  }
}

const errorText = (err) => (err && err.message) || String(err);

function serverError(frame) {
  return new HookwireError(frame.code || 'internal', frame.message || 'the server answered an error', { frame });
}

function hexToBytes(hex) {
  const clean = hex.replace(/[^0-9a-fA-F]/g, '');
  const bytes = new Uint8Array(clean.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(clean.slice(i * 2, i * 2 + 2), 16);
  return bytes;
}

function byteLength(text, limit) {
  // Most frames are far below the limit: skip encoding them (a UTF-16 unit is at most 3 bytes).
  return text.length * 3 <= limit ? text.length : encoder.encode(text).length;
}

/** Minimal listener registry shared by the client and its subscriptions. */
class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return this;
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
    return this;
  }

  once(event, fn) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      fn(...args);
    };
    return this.on(event, wrapper);
  }

  _emit(event, ...args) {
    for (const fn of [...(this._listeners.get(event) || [])]) {
      try {
        fn(...args);
      } catch (err) {
        this._listenerFailed(event, err);
      }
    }
  }

  // A throwing listener must not break the client's bookkeeping: report it instead.
  _listenerFailed(event, err) {
    if (event !== 'error') this._emit('error', err);
    else if (typeof globalThis.reportError === 'function') globalThis.reportError(err);
    else console.error(err);
  }
}

/**
 * One transport connection. The client sets `onframe`, `onerror` and `onclose`,
 * and keeps its per-connection bookkeeping on the object.
 */
class Conn {
  constructor(kind) {
    this.kind = kind;
    this.onframe = () => {};
    this.onerror = () => {};
    this.onclose = () => {};
    this.connected = false; // the server answered `connected`
    this.heard = false; // any server frame arrived (so the transport itself works)
    this.advice = null; // from a `disconnect` push
    this.timer = null; // handshake timeout
    this.connectId = 0;
  }

  _detach() {
    this.onframe = this.onerror = this.onclose = () => {};
  }

  _text(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.onerror(new HookwireError('bad_frame', `the server sent a frame that is not JSON: ${text.slice(0, 80)}`));
      return;
    }
    this.onframe(frame);
  }
}

/** WebSocket: one JSON object per text frame, subprotocol hookwire.v1. */
class WebSocketConn extends Conn {
  constructor(Ctor, url) {
    super('websocket');
    this._Ctor = Ctor;
    this._url = url;
    this._ws = null;
  }

  open() {
    return new Promise((resolve, reject) => {
      const ws = new this._Ctor(this._url, SUBPROTOCOL);
      this._ws = ws;
      let opened = false;
      ws.onopen = () => {
        opened = true;
        resolve();
      };
      ws.onmessage = (ev) => {
        if (typeof ev.data === 'string') this._text(ev.data);
        else this.onerror(new HookwireError('bad_frame', 'the server sent a binary frame'));
      };
      // After opening, `close` always follows `error`: only the close is reported.
      ws.onerror = () => opened || reject(new HookwireError('transport', 'the WebSocket failed to open'));
      ws.onclose = (ev) => {
        if (!opened) reject(new HookwireError('transport', `the WebSocket closed before opening (${ev.code})`));
        else this.onclose({ code: ev.code, reason: ev.reason || '' });
      };
    });
  }

  send(text) {
    try {
      this._ws.send(text);
    } catch {
      // a socket that is closing: its close event follows and decides what happens next
    }
  }

  close(code, reason) {
    this._detach();
    try {
      this._ws?.close(code, reason);
    } catch {
      // already closed, or a reason the implementation refuses: either way it is gone
    }
  }
}

/**
 * WebTransport: newline-delimited JSON on one bidirectional stream; datagrams carry
 * single push frames (volatile channels); the session's close code is the close code.
 */
class WebTransportConn extends Conn {
  constructor(Ctor, options) {
    super('webtransport');
    this._Ctor = Ctor;
    this._options = options;
    this._wt = null;
    this._writer = null;
    this._opened = false;
    this._ended = null; // close info that arrived before open() finished
    this._endTimer = null;
    this._finished = false; // the session ended or we closed it
  }

  async open() {
    const { url, serverCertificateHashes } = this._options;
    const init = {};
    if (serverCertificateHashes) {
      init.serverCertificateHashes = serverCertificateHashes.map(({ algorithm, value }) => ({
        algorithm,
        value: typeof value === 'string' ? hexToBytes(value) : value,
      }));
    }
    const wt = new this._Ctor(url, init);
    this._wt = wt;
    // Observe `closed` at once: it rejects when the session fails, and an unobserved
    // rejection would be reported as unhandled.
    wt.closed.then(
      (info) => this._sessionEnded({ code: info?.closeCode ?? 0, reason: info?.reason ?? '' }),
      (err) => this._sessionEnded({ code: 1006, reason: errorText(err) }),
    );
    await wt.ready;
    const stream = await wt.createBidirectionalStream();
    this._writer = stream.writable.getWriter();
    if (this._ended) throw new HookwireError('transport', `the WebTransport session closed: ${this._ended.reason}`);
    this._opened = true;
    this._readLines(stream.readable.getReader());
    if (wt.datagrams?.readable) this._readDatagrams(wt.datagrams.readable.getReader());
  }

  _sessionEnded(info) {
    this._finished = true;
    clearTimeout(this._endTimer);
    if (!this._opened) this._ended = info;
    else this.onclose(info);
  }

  async _readLines(reader) {
    const decoder = new TextDecoder();
    let pending = ''; // a line split across chunks waits here for its end
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = pending.indexOf('\n')) >= 0) {
          const line = pending.slice(0, nl);
          pending = pending.slice(nl + 1);
          if (line.trim()) this._text(line);
        }
      }
    } catch {
      // the session's `closed` says why
    }
    // The stream carries the whole conversation: once it ends the session is over. The
    // broker finishes the stream first and then closes the session with its close code
    // (after up to 1 s for the acknowledgement): wait for that code rather than pre-empt it.
    if (this._finished) return;
    this._endTimer = setTimeout(() => {
      try {
        this._wt.close({ closeCode: 1006, reason: 'the stream ended' });
      } catch {
        // already closed
      }
    }, 2000);
  }

  async _readDatagrams(reader) {
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        this._text(decoder.decode(value)); // exactly one JSON push per datagram
      }
    } catch {
      // datagrams end with the session
    }
  }

  send(text) {
    // Write errors surface as the session closing; the writer keeps frames in order.
    this._writer.write(encoder.encode(text + '\n')).catch(() => {});
  }

  close(code, reason) {
    this._detach();
    this._finished = true;
    clearTimeout(this._endTimer);
    try {
      this._wt?.close({ closeCode: code, reason });
    } catch {
      // already closed
    }
  }
}

/** A channel subscription that lives across reconnects until unsubscribed. */
export class Subscription extends Emitter {
  constructor(client, channel, onMessage) {
    super();
    this.channel = channel;
    this.offset = null; // last offset seen (or the stream top at subscribe)
    this.epoch = null;
    this.state = 'subscribing'; // 'subscribing' | 'subscribed' | 'unsubscribed'
    this._client = client;
    this._onMessage = onMessage;
    this._gen = 0; // bumped per subscribe attempt; stale replies compare against it
    this._buffer = null; // pushes held back while a subscribe (and its recovery) is in flight
    this._retries = 0;
    this._retryTimer = null;
    this.ready = new Promise((resolve, reject) => {
      this._resolveReady = resolve;
      this._rejectReady = reject;
    });
    // An app that never awaits `ready` must not get an unhandled rejection.
    this.ready.catch(() => {});
  }

  unsubscribe() {
    if (this.state === 'unsubscribed') return Promise.resolve();
    const live = this._client._live;
    this._end('unsubscribe() called', false, null);
    // After a disconnect the server forgot the subscription anyway.
    if (!live) return Promise.resolve();
    const frame = { type: 'unsubscribe', channel: this.channel };
    return this._client._request(frame, { offline: 'reject', onLost: 'reject' }).then(
      () => undefined,
      (err) => {
        if (err.code !== 'disconnected') this._client._emit('error', err);
      },
    );
  }

  _listenerFailed(event, err) {
    this._client._emit('error', err);
  }

  /** Sends `subscribe`, asking to recover from the last known position. */
  _send() {
    if (this.state === 'unsubscribed' || !this._client._live) return;
    clearTimeout(this._retryTimer);
    const gen = ++this._gen;
    this.state = 'subscribing';
    this._buffer = [];
    const frame = { type: 'subscribe', channel: this.channel };
    // Recover only a position the server gave: an empty epoch means a namespace without
    // history, where asking would report a loss that is none.
    const recover = this.epoch ? { offset: this.offset ?? 0, epoch: this.epoch } : null;
    if (recover) frame.recover = recover;
    this._client._request(frame, { offline: 'reject', onLost: 'drop' }).then(
      (reply) => gen === this._gen && this._subscribed(reply, recover, gen),
      (err) => gen === this._gen && this._subscribeFailed(err),
    );
  }

  async _subscribed(reply, recover, gen) {
    if (!recover || !reply.recovered) {
      this.offset = typeof reply.offset === 'number' ? reply.offset : 0;
      this.epoch = typeof reply.epoch === 'string' ? reply.epoch : '';
    }
    for (const pub of reply.publications || []) this._deliver(pub);
    let recovered = !!(recover && reply.recovered);
    // A recovery too large for one reply continues with history pages up to the reply's offset.
    if (recovered && reply.more) recovered = await this._page(reply, gen);
    if (gen !== this._gen) return;
    if (typeof reply.offset === 'number' && reply.offset > this.offset) this.offset = reply.offset;
    const buffered = this._buffer || [];
    this._buffer = null;
    this.state = 'subscribed';
    this._retries = 0;
    const ctx = { channel: this.channel, offset: this.offset, epoch: this.epoch, recovered, wasRecovering: !!recover };
    // Tell the app it missed data before any newer message reaches it.
    if (recover && !recovered) this._client._emit('recoveryFailed', { ...ctx, subscription: this, since: recover });
    this._emit('subscribed', ctx);
    this._resolveReady(ctx);
    for (const pub of buffered) this._deliver(pub);
  }

  /** Pages `history since` after a `more` recovery; false when the gap could not be filled. */
  async _page(reply, gen) {
    const top = reply.offset;
    let next = reply.next_offset;
    try {
      while (typeof next === 'number' && next < top) {
        const page = await this._client._request(
          { type: 'history', channel: this.channel, since: { offset: next, epoch: this.epoch }, limit: top - next },
          { offline: 'reject', onLost: 'reject' },
        );
        if (gen !== this._gen) return false;
        const pubs = page.publications || [];
        // Offsets past the top arrive as pushes (held in the buffer meanwhile).
        for (const pub of pubs) if (pub.offset <= top) this._deliver(pub);
        if (!page.more || !pubs.length) break;
        next = page.next_offset;
      }
      return true;
    } catch (err) {
      if (gen === this._gen && err.code !== 'not_found') this._emit('error', err);
      return false;
    }
  }

  _subscribeFailed(err) {
    if (err.code === 'disconnected') return; // the next connection subscribes again
    this._emit('error', err);
    if (!TRANSIENT_CODES.has(err.code)) {
      this._end(err.message, true, err);
      return;
    }
    const delay = this._client._backoffDelay(this._retries++);
    this._retryTimer = setTimeout(() => this._send(), delay);
  }

  /** A `message` push (stream or datagram). */
  _push(pub) {
    if (this._buffer) this._buffer.push(pub);
    else this._deliver(pub);
  }

  _deliver(pub) {
    if (typeof pub.offset === 'number' && pub.offset > 0) {
      // Recovery and live pushes can overlap: an offset at or below the last one seen is a
      // duplicate. Volatile publications (no offset) are never deduplicated.
      if (this.offset != null && pub.offset <= this.offset) return;
      this.offset = pub.offset;
    }
    try {
      this._onMessage?.(pub.data, pub);
    } catch (err) {
      this._client._emit('error', err);
    }
  }

  /** The connection went away: whatever was in flight is void; the next connection resubscribes. */
  _lost() {
    if (this.state === 'unsubscribed') return;
    this._gen++;
    clearTimeout(this._retryTimer);
    this._buffer = null;
    this.state = 'subscribing';
  }

  _end(reason, byServer, err) {
    this._client._forget(this);
    this.state = 'unsubscribed';
    this._gen++;
    clearTimeout(this._retryTimer);
    this._buffer = null;
    this._rejectReady(err || new HookwireError('unsubscribed', `the subscription to ${this.channel} ended: ${reason}`));
    this._emit('unsubscribed', { channel: this.channel, reason, server: byServer });
  }
}

function normalizeOptions(options) {
  const wt = options.webtransport;
  return {
    getToken: options.getToken || null,
    name: options.name,
    webtransport: wt && wt.url ? { timeoutMs: 5000, ...wt } : null,
    transports: options.transports || ['webtransport', 'websocket'],
    retryTransportAfter: options.retryTransportAfter ?? 3,
    backoff: { baseMs: 500, maxMs: 20000, resetAfterMs: 10000, random: Math.random, ...options.backoff },
    maxQueuedPublishes: options.maxQueuedPublishes ?? 100,
    refreshMarginMs: Math.max(1000, options.refreshMarginMs ?? 30000),
    requestTimeoutMs: options.requestTimeoutMs ?? 10000,
    connectTimeoutMs: options.connectTimeoutMs ?? 10000,
    maxFrameBytes: options.maxFrameBytes ?? 65536,
    WebSocket: options.WebSocket || globalThis.WebSocket,
    WebTransport: options.WebTransport || globalThis.WebTransport,
  };
}

/** The Hookwire client. See README.md for the behaviour in full. */
export class Hookwire extends Emitter {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this._opts = normalizeOptions(options);
    this._state = 'disconnected';
    this._conn = null; // the current connection, from transport open until it ends
    this._subs = new Map(); // channel → Subscription
    this._pending = new Map(); // id → request, on the wire or waiting in the outbox
    this._outbox = []; // requests waiting for a connection, oldest first
    this._nextId = 1;
    this._attempts = 0; // failed attempts since the last stable connection (backoff exponent)
    this._gen = 0; // bumped by each attempt and by disconnect(), to void stale async work
    this._reconnectTimer = null;
    this._refreshTimer = null;
    this._skip = new Map(); // transport → sessions left before it is tried again
    if (!this._opts.WebSocket && !(this._opts.WebTransport && this._opts.webtransport)) {
      throw new HookwireError('transport', 'no WebSocket (or WebTransport) implementation: pass one in the options');
    }
    if (options.autoConnect !== false) this.connect();
  }

  get state() {
    return this._state;
  }

  /** The connection that answered `connected`, if any. */
  get _live() {
    return this._conn && this._conn.connected ? this._conn : null;
  }

  connect() {
    if (this._state === 'connecting' || this._state === 'connected') return;
    this._attempts = 0;
    this._setState('connecting');
    this._startAttempt();
  }

  disconnect() {
    if (this._state === 'disconnected') return;
    this._gen++;
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    const conn = this._conn;
    this._conn = null;
    if (conn) {
      clearTimeout(conn.timer);
      conn.close(1000, 'client disconnect');
    }
    this._connectionLost();
    // Reads wait only for a connection that is coming; publishes stay queued for connect().
    this._rejectOutbox((req) => req.frame.type !== 'publish', 'disconnected');
    this._setState('disconnected');
    this._emit('disconnected', { code: 1000, reason: 'disconnect() called', reconnect: false });
  }

  subscribe(channel, onMessage) {
    if (typeof channel !== 'string' || !CHANNEL_RE.test(channel)) {
      throw new HookwireError('bad_request', `not a channel name: ${channel}`);
    }
    if (this._subs.has(channel)) {
      throw new HookwireError('already_subscribed', `already subscribed to ${channel}: unsubscribe first`);
    }
    const sub = new Subscription(this, channel, onMessage);
    this._subs.set(channel, sub);
    sub._send(); // no-op while offline: the next `connected` subscribes
    return sub;
  }

  getSubscription(channel) {
    return this._subs.get(channel) || null;
  }

  publish(channel, data, { key } = {}) {
    if (data === undefined) return Promise.reject(new HookwireError('bad_request', 'publish needs data (null for none)'));
    const frame = { type: 'publish', channel, data };
    if (key != null) frame.key = String(key);
    // A keyed publish is idempotent on the server, so it is sent again after a reconnect;
    // an unkeyed one might be delivered twice, so its caller decides.
    return this._request(frame, { offline: 'queue', onLost: key != null ? 'resend' : 'reject' });
  }

  presence(channel) {
    return this._request({ type: 'presence', channel }, { offline: 'wait', onLost: 'resend' });
  }

  history(channel, { limit, since } = {}) {
    const frame = { type: 'history', channel };
    if (limit != null) frame.limit = limit;
    if (since != null) frame.since = since;
    return this._request(frame, { offline: 'wait', onLost: 'resend' });
  }

  ping() {
    return this._request({ type: 'ping' }, { offline: 'reject', onLost: 'reject' });
  }

  _setState(next) {
    const prev = this._state;
    if (prev === next) return;
    this._state = next;
    this._emit('state', next, prev);
  }

  _forget(sub) {
    if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
  }

  _backoffDelay(attempt) {
    const { baseMs, maxMs, random } = this._opts.backoff;
    // Full jitter: uniform in [0, min(cap, base·2^n)), so clients do not come back together.
    return Math.floor(random() * Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30)));
  }

  // ---- connecting ----

  async _startAttempt() {
    const gen = ++this._gen;
    let token;
    try {
      token = this._opts.getToken ? await this._opts.getToken() : undefined;
    } catch (err) {
      if (gen !== this._gen) return;
      this._emit('error', new HookwireError('token', `getToken() failed: ${errorText(err)}`, { cause: err }));
      this._afterClose({ code: 0, reason: 'getToken() failed', reconnect: true });
      return;
    }
    if (gen !== this._gen) return;
    const plan = this._transportPlan();
    if (!plan.length) {
      this._emit('error', new HookwireError('transport', 'no transport in `transports` is available here'));
      this._afterClose({ code: 0, reason: 'no usable transport', reconnect: false });
      return;
    }
    this._openTransport(plan, 0, token);
  }

  /** The transports to try in order, without those that recently failed where another worked. */
  _transportPlan() {
    const o = this._opts;
    const plan = o.transports.filter((kind) =>
      kind === 'webtransport' ? !!(o.webtransport && o.WebTransport) : kind === 'websocket' && !!o.WebSocket,
    );
    const usable = plan.filter((kind) => !(this._skip.get(kind) > 0));
    return usable.length ? usable : plan;
  }

  _openTransport(plan, index, token) {
    const kind = plan[index];
    const o = this._opts;
    const conn = kind === 'webtransport' ? new WebTransportConn(o.WebTransport, o.webtransport) : new WebSocketConn(o.WebSocket, this.url);
    Object.assign(conn, { plan, index, token });
    this._conn = conn;
    conn.onframe = (frame) => this._onFrame(conn, frame);
    conn.onerror = (err) => this._emit('error', err);
    conn.onclose = (info) => this._onConnClose(conn, info);
    const timeoutMs = kind === 'webtransport' ? o.webtransport.timeoutMs : o.connectTimeoutMs;
    conn.timer = setTimeout(
      () => this._onConnClose(conn, { code: 1006, reason: `no connected reply within ${timeoutMs} ms` }),
      timeoutMs,
    );
    let opening;
    try {
      opening = conn.open(); // a constructor that throws counts as a failed transport
    } catch (err) {
      opening = Promise.reject(err);
    }
    opening.then(
      () => this._conn === conn && this._sendConnect(conn),
      (err) => this._onConnClose(conn, { code: 1006, reason: errorText(err) }),
    );
  }

  _sendConnect(conn) {
    const frame = { type: 'connect', id: this._nextId++ };
    conn.connectId = frame.id;
    if (conn.token != null) frame.token = conn.token;
    if (this._opts.name != null) frame.name = this._opts.name;
    conn.send(JSON.stringify(frame));
  }

  _onFrame(conn, frame) {
    if (conn !== this._conn || !frame || typeof frame !== 'object') return;
    conn.heard = true;
    if (frame.id != null && frame.id === conn.connectId) this._onHandshake(conn, frame);
    else if (frame.id != null) this._onReply(frame);
    else this._onPush(conn, frame);
  }

  _onHandshake(conn, frame) {
    if (frame.type === 'error') {
      // The server closes next (4001, or 4003) with a `disconnect` push saying what to do.
      this._emit('error', serverError(frame));
      return;
    }
    if (frame.type !== 'connected') return;
    clearTimeout(conn.timer);
    conn.connected = true;
    conn.connectedAt = Date.now();
    this._noteTransportWorked(conn);
    this._scheduleRefresh(frame.expires);
    // Subscriptions first, then what waited, in call order; the app hears `connected`
    // last so that a publish from its handler does not overtake the queue.
    for (const sub of this._subs.values()) sub._send();
    this._flush();
    this._setState('connected');
    this._emit('connected', { ...frame, transport: conn.kind });
  }

  _noteTransportWorked(conn) {
    for (const [kind, left] of this._skip) {
      if (left <= 1) this._skip.delete(kind);
      else this._skip.set(kind, left - 1);
    }
    // A transport that failed in this attempt while a later one worked is blocked on our
    // side (UDP filtered, no HTTP/3): skip it for the next sessions instead of waiting
    // for it to fail on every reconnect.
    for (let i = 0; i < conn.index; i++) this._skip.set(conn.plan[i], this._opts.retryTransportAfter);
  }

  _onPush(conn, frame) {
    const sub = typeof frame.channel === 'string' ? this._subs.get(frame.channel) : undefined;
    switch (frame.type) {
      case 'message':
        sub?._push(frame);
        break;
      case 'join':
      case 'leave':
        sub?._emit(frame.type, frame);
        break;
      case 'unsubscribed':
        sub?._end(frame.reason || 'unsubscribed by the server', true, null);
        break;
      case 'disconnect': {
        const code = frame.code;
        const reconnect = typeof frame.reconnect === 'boolean' ? frame.reconnect : !STOP_CODES.has(code);
        conn.advice = { code, reason: frame.reason || '', reconnect, delayMs: frame.delay_ms };
        // Nothing follows a `disconnect`: end the connection now rather than wait for the close.
        this._onConnClose(conn, { code, reason: frame.reason || '' });
        break;
      }
      case 'error':
        this._emit('error', serverError(frame));
        break;
      default:
      // unknown pushes are ignored (forward compatibility)
    }
  }

  _onConnClose(conn, info) {
    if (conn !== this._conn) return;
    this._conn = null;
    clearTimeout(conn.timer);
    conn.close(1000, 'closing'); // no-op for a connection the server closed
    const wasConnected = conn.connected;
    this._connectionLost();
    // A transport that never carried a server frame failed as a transport: try the next
    // one with the same token before counting the attempt as failed.
    if (!wasConnected && !conn.heard && conn.index + 1 < conn.plan.length) {
      const to = conn.plan[conn.index + 1];
      this._emit('fallback', { from: conn.kind, to, reason: info.reason });
      this._openTransport(conn.plan, conn.index + 1, conn.token);
      return;
    }
    if (wasConnected && Date.now() - conn.connectedAt >= this._opts.backoff.resetAfterMs) this._attempts = 0;
    this._afterClose(conn.advice || { code: info.code, reason: info.reason, reconnect: !STOP_CODES.has(info.code) });
  }

  _afterClose({ code, reason, reconnect, delayMs }) {
    if (!reconnect) {
      this._setState('closed');
      this._rejectOutbox(() => true, 'closed');
      this._emit('disconnected', { code, reason, reconnect: false });
      return;
    }
    // The server's delay_ms is a floor; the jittered backoff may wait longer.
    const delay = Math.max(delayMs || 0, this._backoffDelay(this._attempts++));
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this._startAttempt();
    }, delay);
    this._setState('connecting');
    this._emit('disconnected', { code, reason, reconnect: true, delay });
  }

  // ---- token refresh ----

  _scheduleRefresh(expires) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this._opts.getToken || typeof expires !== 'number' || !Number.isFinite(expires)) return;
    const at = expires * 1000 - this._opts.refreshMarginMs;
    const tick = () => {
      const wait = at - Date.now();
      if (wait > 0) this._refreshTimer = setTimeout(tick, Math.min(wait, MAX_TIMER_MS));
      else this._refresh(expires);
    };
    this._refreshTimer = setTimeout(tick, Math.max(0, Math.min(at - Date.now(), MAX_TIMER_MS)));
  }

  async _refresh(expires) {
    this._refreshTimer = null;
    const conn = this._live;
    if (!conn) return;
    let token;
    try {
      token = await this._opts.getToken();
    } catch (err) {
      // The server closes with 4002 at expiry; the reconnect then asks for a token again.
      if (conn === this._conn) this._emit('error', new HookwireError('token', `getToken() failed: ${errorText(err)}`, { cause: err }));
      return;
    }
    if (conn !== this._conn) return;
    try {
      const reply = await this._request({ type: 'refresh', token }, { offline: 'reject', onLost: 'drop' });
      if (conn !== this._conn) return;
      this._emit('refreshed', reply);
      // A token source that hands back the same token would refresh in a loop: schedule
      // again only when the expiry moved.
      if (reply.expires > expires) this._scheduleRefresh(reply.expires);
    } catch (err) {
      if (conn === this._conn) this._emit('error', err);
    }
  }

  // ---- requests ----

  /**
   * Sends a frame with a fresh id and returns a promise of its reply.
   * offline: 'queue' (bounded publish queue), 'wait' (only while connecting) or 'reject'.
   * onLost (connection lost before the reply): 'resend', 'reject' or 'drop' (never settles).
   * A queued publish's timeout starts when it is sent (the queue is meant to outlast an
   * outage); a waiting read's starts at the call, so the app hears back within the timeout.
   */
  _request(frame, { offline, onLost }) {
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      const text = JSON.stringify({ type: frame.type, id, ...frame });
      // The server closes the whole connection (1009) for one oversized frame: refuse it here.
      if (byteLength(text, this._opts.maxFrameBytes) > this._opts.maxFrameBytes) {
        reject(new HookwireError('too_large', `the ${frame.type} frame is over ${this._opts.maxFrameBytes} bytes`));
        return;
      }
      const req = { id, frame, text, resolve, reject, onLost, sent: false, timer: null, fromCall: offline === 'wait' };
      if (req.fromCall) this._startTimer(req);
      if (this._live) {
        this._pending.set(id, req);
        this._transmit(req);
      } else if (this._state === 'closed') {
        clearTimeout(req.timer);
        reject(new HookwireError('closed', 'the client is closed: call connect() first'));
      } else if (offline === 'queue' || (offline === 'wait' && this._state === 'connecting')) {
        this._pending.set(id, req);
        this._outbox.push(req);
        this._trimQueue();
      } else {
        clearTimeout(req.timer);
        reject(new HookwireError('disconnected', `cannot send ${frame.type} while ${this._state}`));
      }
    });
  }

  _transmit(req) {
    req.sent = true;
    if (!req.timer) this._startTimer(req);
    this._conn.send(req.text);
  }

  _startTimer(req) {
    req.timer = setTimeout(() => {
      this._pending.delete(req.id);
      this._outbox = this._outbox.filter((other) => other !== req);
      req.reject(new HookwireError('timeout', `no reply to ${req.frame.type} within ${this._opts.requestTimeoutMs} ms`));
    }, this._opts.requestTimeoutMs);
  }

  _flush() {
    const waiting = this._outbox;
    this._outbox = [];
    for (const req of waiting) this._transmit(req);
  }

  _onReply(frame) {
    const req = this._pending.get(frame.id);
    if (!req || !req.sent) return; // a late reply to a request that timed out
    this._pending.delete(frame.id);
    clearTimeout(req.timer);
    if (frame.type === 'error') req.reject(serverError(frame));
    else req.resolve(frame);
  }

  /** Requests on the wire lost their connection: resend, reject or drop each. */
  _connectionLost() {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    const resend = [];
    for (const req of this._pending.values()) {
      if (!req.sent) continue;
      req.sent = false;
      if (req.onLost === 'resend') {
        if (!req.fromCall) {
          clearTimeout(req.timer);
          req.timer = null;
        }
        resend.push(req);
        continue;
      }
      clearTimeout(req.timer);
      this._pending.delete(req.id);
      if (req.onLost === 'reject') {
        req.reject(new HookwireError('disconnected', `the connection closed before the ${req.frame.type} reply`));
      }
    }
    // What was already on the wire went out before what is still waiting: keep that order.
    this._outbox = resend.concat(this._outbox);
    this._trimQueue();
    for (const sub of this._subs.values()) sub._lost();
  }

  /** Keeps at most maxQueuedPublishes publishes waiting, dropping the oldest. */
  _trimQueue() {
    let excess = this._outbox.filter((req) => req.frame.type === 'publish').length - this._opts.maxQueuedPublishes;
    if (excess <= 0) return;
    // Dropping the oldest keeps the freshest state, which is what a realtime app shows.
    this._outbox = this._outbox.filter((req) => {
      if (excess <= 0 || req.frame.type !== 'publish') return true;
      excess--;
      this._dropPublish(req, 'queue_full');
      return false;
    });
  }

  _dropPublish(req, reason) {
    this._pending.delete(req.id);
    const { channel, data, key } = req.frame;
    this._emit('publishDropped', { channel, data, key, reason });
    req.reject(new HookwireError('dropped', `the publish to ${channel} was dropped from the offline queue (${reason})`, { reason }));
  }

  /** Rejects the waiting requests that match (publishes as dropped). */
  _rejectOutbox(match, code) {
    this._outbox = this._outbox.filter((req) => {
      if (!match(req)) return true;
      if (req.frame.type === 'publish') this._dropPublish(req, code);
      else {
        this._pending.delete(req.id);
        clearTimeout(req.timer);
        req.reject(new HookwireError(code, `the ${req.frame.type} was not sent: the client is ${code}`));
      }
      return false;
    });
  }
}

export default Hookwire;
