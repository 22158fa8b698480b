/**
 * wsfabric.js — the browser client of wsfabric.
 *
 * One dependency-free file (ES2017, no build step). Load it as a classic
 * script, `<script src="/wsfabric.js"></script>`, which defines the global
 * `wsfabric`; under CommonJS it is also `module.exports`.
 *
 *     const c = wsfabric.connect();            // ws(s)://<page host>/ws
 *     c.on('open', () => c.send('hello'));
 *     c.on('message', (data) => console.log(data));   // string or ArrayBuffer
 *     c.on('close', (code, reason, willReconnect) => ...);
 *     c.on('reconnecting', (attempt, delay) => ...);
 *     c.on('error', (err) => console.warn(err.code, err.message));
 *     c.close();                               // 1000, and no reconnect
 *
 * Connection states (`c.state`):
 *   'connecting'   a socket is being opened
 *   'open'         the socket is open; send() writes straight to it
 *   'reconnecting' the socket is gone; a new one opens after a backoff delay
 *   'closing'      close() was called; waiting for the socket to finish
 *   'closed'       final: close() was called, the server closed with a
 *                  "don't come back" code, or reconnect is off / exhausted
 *
 * Sending while not connected: messages are queued (at most
 * `options.maxQueue`, default 1000) and flushed, in order, right after the
 * 'open' listeners ran — so an 'open' listener can send a login or
 * re-authentication first. Over the bound the message is dropped and an
 * 'error' event with `err.code === 'QUEUE_FULL'` carries it in `err.data`.
 * Messages still queued when the connection reaches 'closed' are dropped with
 * an 'error' event `QUEUE_DISCARDED`. send() on a closed connection throws.
 * With no 'error' listener, these errors go to console.warn instead.
 *
 * Layering: the connection is a small event emitter (`wsfabric.Emitter`)
 * around a WebSocket. The routed layer, `wsfabric.client()`, is built on it
 * the same way any other layer could be: it subscribes to 'open', 'message'
 * and 'close' and calls send().
 *
 * Routed messages (a server running `wsfabric.routing.Router`; JSON codec,
 * subprotocol `wsfabric.json`, docs/wire-protocol.md):
 *
 *     const c = wsfabric.client({ compressRoutes: true });
 *     c.onPush('chat.message', (data) => show(data));
 *     const reply = await c.request('chat.join', { room: 'lobby' }, { timeout: 5000 });
 *     c.notify('chat.typing', { room: 'lobby' });
 *     // a failed request rejects with a wsfabric.RouteError: err.code is the
 *     // server's ('not_found', 'bad_request', ...) or TIMEOUT, DISCONNECTED,
 *     // CLOSED, QUEUE_FULL, BAD_DATA
 *
 * The protobuf codec (`wsfabric.proto`) is not implemented here: a browser
 * client of a protobuf application uses JSON, which the server converts.
 */
(function (root, factory) {
  'use strict';
  const api = factory();
  if (typeof module === 'object' && module && module.exports) {
    module.exports = api;
  }
  if (root) {
    root.wsfabric = api;
  }
})(typeof globalThis !== 'undefined' ? globalThis : this, function () {
  'use strict';

  const VERSION = '0.1.0';

  // WebSocket.readyState values; spelled out so a WebSocket implementation
  // passed in options (tests, Node) need not carry the static constants.
  const WS_CONNECTING = 0;
  const WS_OPEN = 1;

  const DEFAULTS = Object.freeze({
    protocols: undefined,
    reconnect: true,
    minDelay: 250,
    maxDelay: 10000,
    jitter: 0.5,
    maxAttempts: Infinity,
    connectTimeout: 10000,
    resetAfter: 5000,
    maxQueue: 1000,
    // 1008 policy violation, 4000-4099 application rejects, 4401 expired
    // or refused token: the server said "don't come back" (or not with this
    // token), and retrying would only hammer it.
    noReconnectCodes: [1008, [4000, 4099], 4401],
    WebSocket: undefined,
  });

  /**
   * Report an exception thrown by a listener without unwinding the caller:
   * the connection's state machine must keep going, but the error must still
   * reach the console and window.onerror instead of vanishing.
   */
  function reportListenerError(err) {
    setTimeout(function () {
      throw err;
    }, 0);
  }

  /**
   * A minimal event emitter. Listeners run synchronously in the order they
   * were added; one that throws does not stop the others.
   */
  class Emitter {
    constructor() {
      this._listeners = new Map();
    }

    /**
     * Add a listener.
     * @param {string} event
     * @param {Function} fn
     * @returns {this} for chaining
     */
    on(event, fn) {
      return this._add(event, fn, false);
    }

    /**
     * Add a listener that is removed after its first call.
     * @param {string} event
     * @param {Function} fn
     * @returns {this}
     */
    once(event, fn) {
      return this._add(event, fn, true);
    }

    /**
     * Remove listeners: `off(event, fn)` one listener, `off(event)` all of
     * an event, `off()` all.
     * @param {string} [event]
     * @param {Function} [fn]
     * @returns {this}
     */
    off(event, fn) {
      if (event === undefined) {
        this._listeners.clear();
      } else if (fn === undefined) {
        this._listeners.delete(event);
      } else {
        const list = this._listeners.get(event);
        if (list) {
          const i = list.findIndex((entry) => entry.fn === fn);
          if (i >= 0) list.splice(i, 1);
          if (!list.length) this._listeners.delete(event);
        }
      }
      return this;
    }

    /**
     * Call the listeners of an event with the given arguments.
     * @param {string} event
     * @param {...*} args
     * @returns {boolean} whether any listener was called
     */
    emit(event, ...args) {
      const list = this._listeners.get(event);
      if (!list || !list.length) return false;
      // Iterate over a copy: listeners may add or remove listeners.
      for (const entry of list.slice()) {
        if (entry.once) this.off(event, entry.fn);
        try {
          entry.fn.apply(this, args);
        } catch (err) {
          reportListenerError(err);
        }
      }
      return true;
    }

    /**
     * @param {string} event
     * @returns {number} how many listeners the event has
     */
    listenerCount(event) {
      const list = this._listeners.get(event);
      return list ? list.length : 0;
    }

    _add(event, fn, once) {
      if (typeof fn !== 'function') {
        throw new TypeError('wsfabric: listener for "' + event + '" must be a function');
      }
      let list = this._listeners.get(event);
      if (!list) {
        list = [];
        this._listeners.set(event, list);
      }
      list.push({ fn: fn, once: once });
      return this;
    }
  }

  /**
   * The delay before reconnect attempt `attempt`: exponential from
   * `minDelay`, capped at `maxDelay`, with up to `jitter` of it taken off at
   * random so that many clients dropped at once do not return in lockstep.
   * @param {number} attempt 1 for the first retry
   * @param {number} minDelay ms
   * @param {number} maxDelay ms
   * @param {number} [jitter=0.5] fraction 0..1 of the delay that is random
   * @param {function(): number} [random=Math.random]
   * @returns {number} ms, an integer in [ceiling*(1-jitter), ceiling]
   */
  function backoffDelay(attempt, minDelay, maxDelay, jitter, random) {
    const j = jitter === undefined ? 0.5 : Math.min(1, Math.max(0, jitter));
    const rnd = random || Math.random;
    // Cap the exponent so 2 ** n stays finite for absurd attempt counts.
    const exp = Math.min(Math.max(attempt, 1) - 1, 30);
    const ceiling = Math.min(maxDelay, minDelay * Math.pow(2, exp));
    return Math.round(ceiling * (1 - j * rnd()));
  }

  /** Build a predicate from the `noReconnectCodes` option. */
  function codeMatcher(spec) {
    if (typeof spec === 'function') return spec;
    const items = spec || [];
    return function (code) {
      return items.some(function (item) {
        return Array.isArray(item) ? code >= item[0] && code <= item[1] : code === item;
      });
    };
  }

  function defaultUrl() {
    const loc = typeof location !== 'undefined' ? location : null;
    if (!loc || !loc.host) {
      throw new Error('wsfabric: no url given and no page location to derive one from');
    }
    return (loc.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + loc.host + '/ws';
  }

  /**
   * Turn what the caller gave into an absolute ws:/wss: URL. Relative URLs
   * ('/ws') resolve against the page; http(s) URLs map to ws(s).
   */
  function resolveUrl(url) {
    if (url === undefined || url === null || url === '') return defaultUrl();
    const base = typeof location !== 'undefined' && location.href ? location.href : undefined;
    const u = new URL(String(url), base);
    if (u.protocol === 'http:') u.protocol = 'ws:';
    else if (u.protocol === 'https:') u.protocol = 'wss:';
    else if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
      throw new TypeError('wsfabric: unsupported URL scheme ' + u.protocol);
    }
    return u.href;
  }

  function isSendable(data) {
    return (
      typeof data === 'string' ||
      data instanceof ArrayBuffer ||
      ArrayBuffer.isView(data) ||
      (typeof Blob !== 'undefined' && data instanceof Blob)
    );
  }

  /**
   * A private copy of binary data: WebSocket.send() snapshots the bytes at
   * call time, so a queued message must not change if the caller reuses its
   * buffer afterwards. Strings and Blobs are immutable already.
   */
  function snapshot(data) {
    if (data instanceof ArrayBuffer) return data.slice(0);
    if (ArrayBuffer.isView(data)) {
      return new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
    }
    return data;
  }

  function makeError(code, message, extra) {
    const err = new Error('wsfabric: ' + message);
    err.code = code;
    if (extra) Object.assign(err, extra);
    return err;
  }

  /**
   * A WebSocket connection that reconnects by itself. Create it with
   * `wsfabric.connect()`.
   *
   * Events:
   *   'open'          ()  — after every successful (re)connect
   *   'message'       (data) — string for text frames, ArrayBuffer for binary
   *   'close'         (code, reason, willReconnect) — after every socket
   *                   close, and once more with willReconnect=false when
   *                   close() is called while waiting to reconnect; the
   *                   last 'close' of a connection always has
   *                   willReconnect=false
   *   'reconnecting'  (attempt, delay) — a new socket opens in `delay` ms;
   *                   `attempt` counts from 1 and restarts only once a
   *                   connection stayed up `resetAfter` ms, so a server that
   *                   accepts and drops at once still gets growing delays
   *   'error'         (err) — err.code is 'SOCKET_ERROR', 'CONNECT_FAILED',
   *                   'CONNECT_TIMEOUT', 'QUEUE_FULL' or 'QUEUE_DISCARDED'
   */
  class Connection extends Emitter {
    /**
     * @param {string|URL|function(): string} [url] see wsfabric.connect
     * @param {object} [options] see wsfabric.connect
     */
    constructor(url, options) {
      super();
      this._opts = Object.assign({}, DEFAULTS, options || {});
      this._WebSocket = this._opts.WebSocket || (typeof WebSocket !== 'undefined' ? WebSocket : null);
      if (!this._WebSocket) {
        throw new Error('wsfabric: no WebSocket implementation (pass options.WebSocket)');
      }
      if (!(this._opts.maxQueue >= 0)) {
        throw new RangeError('wsfabric: maxQueue must be a number >= 0');
      }
      if (!(this._opts.minDelay >= 0 && this._opts.maxDelay >= this._opts.minDelay)) {
        throw new RangeError('wsfabric: need 0 <= minDelay <= maxDelay');
      }
      // A function is called at every (re)connect, e.g. to put a fresh token
      // in the query string; a fixed URL is checked now so a typo fails fast.
      this._urlSource = typeof url === 'function' ? url : resolveUrl(url);
      this._url = typeof url === 'function' ? null : this._urlSource;
      this._noReconnect = codeMatcher(this._opts.noReconnectCodes);

      this._ws = null;
      this._state = 'connecting';
      this._queue = [];
      this._attempt = 0;
      this._closedByUser = false;
      this._retryTimer = null;
      this._connectTimer = null;
      this._stableTimer = null;
      this._onOnline = this._onOnline.bind(this);

      this._watchNetwork(true);
      this._open();
    }

    /** @returns {string} 'connecting' | 'open' | 'reconnecting' | 'closing' | 'closed' */
    get state() {
      return this._state;
    }

    /** @returns {string|null} the URL of the current or last socket */
    get url() {
      return this._url;
    }

    /** @returns {string} the subprotocol the server chose ('' if none or not open) */
    get protocol() {
      return this._ws && this._state === 'open' ? this._ws.protocol : '';
    }

    /** @returns {number} the current reconnect attempt (0 while connected after a stable period) */
    get attempt() {
      return this._attempt;
    }

    /** @returns {number} messages waiting for the connection to open */
    get queued() {
      return this._queue.length;
    }

    /** @returns {number} bytes handed to the socket but not yet sent */
    get bufferedAmount() {
      return this._ws ? this._ws.bufferedAmount : 0;
    }

    /**
     * Send one message: a string as a text frame, an ArrayBuffer, typed
     * array, DataView or Blob as a binary frame. While not connected the
     * message is queued (see the file comment).
     * @param {string|ArrayBuffer|ArrayBufferView|Blob} data
     * @returns {boolean} true if written to the socket now, false if queued
     *   or dropped (a drop also emits 'error' QUEUE_FULL)
     * @throws {TypeError} for another kind of data
     * @throws {Error} (err.code 'CLOSED') once the connection is closing or closed
     */
    send(data) {
      if (!isSendable(data)) {
        throw new TypeError('wsfabric: send() takes a string, ArrayBuffer, typed array, DataView or Blob');
      }
      if (this._state === 'closed' || this._state === 'closing') {
        throw makeError('CLOSED', 'send() on a ' + this._state + ' connection');
      }
      const ws = this._ws;
      if (this._state === 'open' && ws && ws.readyState === WS_OPEN) {
        ws.send(data);
        return true;
      }
      if (this._queue.length >= this._opts.maxQueue) {
        this._error('QUEUE_FULL', 'send queue full (' + this._opts.maxQueue + ' messages); message dropped', {
          data: data,
        });
        return false;
      }
      this._queue.push(snapshot(data));
      return false;
    }

    /**
     * Close the connection for good: no reconnect follows.
     * @param {number} [code=1000] 1000 or 3000-4999 (what browsers allow)
     * @param {string} [reason=''] at most 123 bytes of UTF-8
     */
    close(code, reason) {
      const c = code === undefined ? 1000 : code;
      const r = reason === undefined ? '' : String(reason);
      // Check before changing any state: the browser would throw from
      // WebSocket.close() and leave us half closed.
      if (c !== 1000 && !(c >= 3000 && c <= 4999)) {
        throw new RangeError('wsfabric: close code must be 1000 or 3000-4999, got ' + c);
      }
      if (new TextEncoder().encode(r).length > 123) {
        throw new RangeError('wsfabric: close reason longer than 123 bytes');
      }
      if (this._state === 'closed' || this._state === 'closing') return;
      this._closedByUser = true;
      this._clearTimers();
      this._watchNetwork(false);
      const ws = this._ws;
      if (ws && (ws.readyState === WS_CONNECTING || ws.readyState === WS_OPEN)) {
        this._state = 'closing';
        ws.close(c, r);
        return; // _onClose finishes the job
      }
      if (ws) {
        this._state = 'closing'; // already closing on the server's initiative
        return;
      }
      this._finish();
      this.emit('close', c, r, false);
    }

    /**
     * Connect now: skips the wait while 'reconnecting', or starts again
     * after the connection was closed (the backoff restarts from 1).
     * Does nothing while 'connecting', 'open' or 'closing'.
     */
    reconnect() {
      if (this._state === 'reconnecting') {
        this._open();
      } else if (this._state === 'closed') {
        this._closedByUser = false;
        this._attempt = 0;
        this._watchNetwork(true);
        this._open();
      }
    }

    // -- internals ------------------------------------------------------------

    _open() {
      this._clearTimers();
      let ws;
      try {
        this._url = typeof this._urlSource === 'function' ? resolveUrl(this._urlSource()) : this._urlSource;
        ws = new this._WebSocket(this._url, this._opts.protocols);
      } catch (err) {
        // A URL function that throws, a blocked port, ...: treat it like a
        // failed connection so the backoff applies. Report it on the next
        // tick, as a real socket would, so that listeners added right after
        // connect() see it.
        this._state = 'connecting';
        this._retryTimer = setTimeout(() => {
          this._retryTimer = null;
          this._error('CONNECT_FAILED', 'cannot open ' + this._url + ': ' + err.message, { cause: err });
          this._afterClose(1006, '');
        }, 0);
        return;
      }
      ws.binaryType = 'arraybuffer';
      this._ws = ws;
      this._state = 'connecting';
      ws.onopen = () => {
        if (ws === this._ws) this._onOpen();
      };
      ws.onmessage = (ev) => {
        if (ws === this._ws) this.emit('message', ev.data);
      };
      ws.onerror = () => {
        // Browsers hide the cause of socket errors; the close event follows.
        if (ws === this._ws) this._error('SOCKET_ERROR', 'WebSocket error on ' + this._url);
      };
      ws.onclose = (ev) => {
        if (ws === this._ws) this._onClose(ev);
      };
      if (this._opts.connectTimeout > 0) {
        // A handshake can hang (a blackholed address) far longer than the
        // browser's own timeout; give up and let the backoff retry.
        this._connectTimer = setTimeout(() => {
          this._connectTimer = null;
          if (ws === this._ws && ws.readyState === WS_CONNECTING) {
            this._error('CONNECT_TIMEOUT', 'no connection after ' + this._opts.connectTimeout + ' ms');
            ws.close(); // fires 'close' with 1006 -> retry
          }
        }, this._opts.connectTimeout);
      }
    }

    _onOpen() {
      clearTimeout(this._connectTimer);
      this._connectTimer = null;
      this._state = 'open';
      if (this._opts.resetAfter > 0) {
        this._stableTimer = setTimeout(() => {
          this._stableTimer = null;
          this._attempt = 0;
        }, this._opts.resetAfter);
      } else {
        this._attempt = 0;
      }
      this.emit('open');
      this._flush();
    }

    _flush() {
      const ws = this._ws;
      // A listener may have closed the connection during 'open'.
      while (this._queue.length && this._state === 'open' && ws && ws.readyState === WS_OPEN) {
        ws.send(this._queue.shift());
      }
    }

    _onClose(ev) {
      this._ws = null;
      this._clearTimers();
      this._afterClose(ev.code, ev.reason || '');
    }

    _afterClose(code, reason) {
      const willReconnect =
        !this._closedByUser &&
        !!this._opts.reconnect &&
        !this._noReconnect(code) &&
        this._attempt < this._opts.maxAttempts;
      if (willReconnect) {
        this._state = 'reconnecting';
      } else {
        this._finish();
      }
      this.emit('close', code, reason, willReconnect);
      // A 'close' listener may have called close() or reconnect().
      if (willReconnect && this._state === 'reconnecting' && !this._retryTimer) {
        this._scheduleReconnect();
      }
    }

    _scheduleReconnect() {
      this._attempt += 1;
      const o = this._opts;
      const delay = backoffDelay(this._attempt, o.minDelay, o.maxDelay, o.jitter);
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null;
        this._open();
      }, delay);
      this.emit('reconnecting', this._attempt, delay);
    }

    /** Enter 'closed': nothing is running and nothing queued any more. */
    _finish() {
      this._state = 'closed';
      this._ws = null;
      this._clearTimers();
      this._watchNetwork(false);
      if (this._queue.length) {
        const dropped = this._queue;
        this._queue = [];
        this._error('QUEUE_DISCARDED', dropped.length + ' queued message(s) dropped: connection closed', {
          data: dropped,
        });
      }
    }

    _clearTimers() {
      clearTimeout(this._retryTimer);
      clearTimeout(this._connectTimer);
      clearTimeout(this._stableTimer);
      this._retryTimer = this._connectTimer = this._stableTimer = null;
    }

    _error(code, message, extra) {
      const err = makeError(code, message, extra);
      // Dropped messages must never pass unnoticed: without an 'error'
      // listener, say it on the console (the browser already logs socket
      // errors itself).
      if (!this.emit('error', err) && code !== 'SOCKET_ERROR' && typeof console !== 'undefined') {
        console.warn(err.message);
      }
    }

    /** When the browser comes back online, don't sit out the backoff. */
    _onOnline() {
      if (this._state === 'reconnecting') this._open();
    }

    _watchNetwork(on) {
      if (typeof window === 'undefined' || !window.addEventListener) return;
      if (on) window.addEventListener('online', this._onOnline);
      else window.removeEventListener('online', this._onOnline);
    }
  }

  /**
   * Open a reconnecting WebSocket connection.
   *
   * @param {string|URL|function(): string} [url] default
   *   `ws(s)://<location.host>/ws`; relative URLs resolve against the page,
   *   http(s) maps to ws(s); a function is called before every (re)connect.
   *   May be omitted: `connect({...options})`.
   * @param {object} [options]
   * @param {string|string[]} [options.protocols] WebSocket subprotocols
   * @param {boolean} [options.reconnect=true] reconnect after an unexpected close
   * @param {number} [options.minDelay=250] ms before the first retry (before jitter)
   * @param {number} [options.maxDelay=10000] cap of the retry delay, ms
   * @param {number} [options.jitter=0.5] fraction of each delay that is random
   * @param {number} [options.maxAttempts=Infinity] retries before giving up
   * @param {number} [options.connectTimeout=10000] ms a handshake may take (0: no limit)
   * @param {number} [options.resetAfter=5000] ms a connection must stay up
   *   before the attempt counter (and so the delay) starts again from 1
   * @param {number} [options.maxQueue=1000] messages kept while not connected
   * @param {Array<number|number[]>|function(number): boolean}
   *   [options.noReconnectCodes=[1008, [4000, 4099], 4401]] close codes (or
   *   [low, high] ranges) after which the connection stays closed
   * @param {Function} [options.WebSocket] WebSocket implementation to use
   * @returns {Connection}
   */
  function connect(url, options) {
    if (
      options === undefined &&
      url !== null &&
      typeof url === 'object' &&
      !(typeof URL !== 'undefined' && url instanceof URL)
    ) {
      return new Connection(undefined, url);
    }
    return new Connection(url, options);
  }

  // -- the routed layer ---------------------------------------------------------

  /** The JSON codec's WebSocket subprotocol (docs/wire-protocol.md). */
  const JSON_SUBPROTOCOL = 'wsfabric.json';
  /** The push that carries the route table of route compression. */
  const ROUTES_PUSH = 'wsfabric.routes';
  /** Request ids are JSON numbers: they must stay exact integers. */
  const MAX_ID = Number.MAX_SAFE_INTEGER;

  const CLIENT_DEFAULTS = Object.freeze({
    timeout: 10000,
    compressRoutes: false,
    maxHeld: 1000,
  });

  /**
   * The error of a failed request, or an error the server sent for a notify.
   *
   * `code` is the server's code (`bad_request`, `not_found`, `internal`,
   * `service_unavailable` or an application's own) or, for failures found
   * in the browser, one in capitals: `TIMEOUT`, `DISCONNECTED` (the socket
   * closed while the request was on the wire; the connection reconnects),
   * `CLOSED` (the connection is closed for good), `QUEUE_FULL`,
   * `BAD_DATA` (data that JSON cannot carry).
   * `message` is the server's message as is; `route` and `id` say which
   * request it was, when known.
   */
  class RouteError extends Error {
    constructor(code, message, route, id) {
      super(message);
      this.name = 'RouteError';
      this.code = code;
      this.route = route === undefined ? null : route;
      this.id = id === undefined ? null : id;
    }
  }

  /** `url` with `name=value` in its query; `url` is absolute. */
  function withParam(url, name, value) {
    const u = new URL(url);
    u.searchParams.set(name, value);
    return u.href;
  }

  function isObject(value) {
    return value !== null && typeof value === 'object' && !Array.isArray(value);
  }

  /**
   * A connection to a `wsfabric.routing.Router` application: request /
   * response, notify and pushes by route name, in the JSON codec, over a
   * reconnecting {@link Connection}. Create it with `wsfabric.client()`.
   *
   *     const c = wsfabric.client();                       // ws(s)://<page host>/ws
   *     c.onPush('chat.message', (data) => show(data));
   *     c.on('open', () => c.request('chat.login', {nick: 'alice'}).then(...));
   *     const members = await c.request('chat.join', {room: 'lobby'}, {timeout: 5000});
   *     c.notify('chat.typing', {room: 'lobby'});
   *
   * Events: 'open', 'close', 'reconnecting' and 'error' as on a Connection
   * (plus 'error' with a RouteError for a server error that answers no
   * request, e.g. for a failed notify); 'push' (route, data) for every push;
   * 'routes' (table) when the server's route table arrives; 'message' (data)
   * for a frame that is not an envelope (a binary frame, or raw text an
   * application sent with `send_to_client`).
   *
   * Requests made while the socket is down are queued with the raw
   * messages and sent after the next 'open'. A request already written when
   * the socket closes fails with `DISCONNECTED`: the server that took it is
   * gone, and only the caller knows whether it is safe to repeat.
   */
  class Client extends Emitter {
    /**
     * @param {string|URL|function(): string} [url] as for wsfabric.connect
     * @param {object} [options] see wsfabric.client
     */
    constructor(url, options) {
      super();
      const opts = Object.assign({}, CLIENT_DEFAULTS, options || {});
      if (!(opts.timeout >= 0)) throw new RangeError('wsfabric: timeout must be a number >= 0');
      if (opts.protocols === undefined) opts.protocols = [JSON_SUBPROTOCOL];
      this._opts = opts;
      this._pending = new Map(); // id -> {resolve, reject, timer, route, gen}
      this._nextId = 1;
      this._gen = 0; // counts 'open's: which socket a written request went out on
      this._pushHandlers = new Map(); // route -> [fn]
      this._codes = null; // route name -> code, once the server's table arrived
      this._names = null; // code -> route name
      this._held = []; // pushes with codes, waiting for the table

      let source = url;
      if (opts.compressRoutes) {
        source =
          typeof url === 'function'
            ? () => withParam(resolveUrl(url()), 'routes', '1')
            : withParam(resolveUrl(url), 'routes', '1');
      }
      const conn = new Connection(source, opts);
      this.connection = conn;
      conn.on('open', () => {
        this._gen += 1;
        this.emit('open');
      });
      conn.on('message', (data) => this._onMessage(data));
      conn.on('close', (code, reason, willReconnect) => this._onClose(code, reason, willReconnect));
      conn.on('reconnecting', (attempt, delay) => this.emit('reconnecting', attempt, delay));
      conn.on('error', (err) => this._emitError(err));
    }

    /** @returns {string} the connection's state, see Connection */
    get state() {
      return this.connection.state;
    }

    /** @returns {string} the subprotocol the server chose */
    get protocol() {
      return this.connection.protocol;
    }

    /** @returns {number} requests waiting for their response */
    get pending() {
      return this._pending.size;
    }

    /** @returns {object|null} the route table {name: code} of this socket, if any */
    get routes() {
      return this._codes ? Object.fromEntries(this._codes) : null;
    }

    /**
     * Call a route and wait for its response.
     * @param {string} route
     * @param {*} [data] any JSON value; undefined sends no data (null)
     * @param {object} [options]
     * @param {number} [options.timeout] ms to wait (default the client's
     *   `timeout`, 10000); 0 waits for ever
     * @returns {Promise<*>} the response's data; rejects with a RouteError
     */
    request(route, data, options) {
      const timeout = options && options.timeout !== undefined ? options.timeout : this._opts.timeout;
      let frame;
      const id = this._takeId();
      try {
        frame = this._encode(route, id, data);
      } catch (err) {
        return Promise.reject(err);
      }
      return new Promise((resolve, reject) => {
        const entry = { resolve: resolve, reject: reject, timer: null, route: route, gen: 0 };
        this._pending.set(id, entry);
        if (timeout > 0) {
          entry.timer = setTimeout(() => {
            this._settle(id, new RouteError('TIMEOUT', 'no response to ' + route + ' within ' + timeout + ' ms', route, id));
          }, timeout);
        }
        const queuedBefore = this.connection.queued;
        let written;
        try {
          written = this.connection.send(frame);
        } catch (err) {
          this._settle(id, new RouteError(err.code || 'CLOSED', err.message, route, id));
          return;
        }
        if (written) {
          entry.gen = this._gen;
        } else if (this.connection.queued > queuedBefore) {
          entry.gen = this._gen + 1; // flushed right after the next 'open'
        } else {
          this._settle(id, new RouteError('QUEUE_FULL', 'send queue full; request to ' + route + ' dropped', route, id));
        }
      });
    }

    /**
     * Send to a route without waiting for anything. A failure comes back, if
     * at all, as an 'error' event with a RouteError whose `route` is this one.
     * @param {string} route
     * @param {*} [data] any JSON value
     * @returns {boolean} true if written to the socket now, false if queued
     * @throws {RouteError} BAD_DATA; Error CLOSED on a closed connection
     */
    notify(route, data) {
      return this.connection.send(this._encode(route, null, data));
    }

    /**
     * Call `fn(data, route)` for every push on `route`.
     * @param {string} route
     * @param {function(*, string)} fn
     * @returns {this}
     */
    onPush(route, fn) {
      if (typeof route !== 'string' || !route) throw new TypeError('wsfabric: route must be a non-empty string');
      if (typeof fn !== 'function') throw new TypeError('wsfabric: push handler must be a function');
      let list = this._pushHandlers.get(route);
      if (!list) {
        list = [];
        this._pushHandlers.set(route, list);
      }
      list.push(fn);
      return this;
    }

    /**
     * Remove push handlers: `offPush(route, fn)` one, `offPush(route)` all of
     * a route.
     * @returns {this}
     */
    offPush(route, fn) {
      const list = this._pushHandlers.get(route);
      if (!list) return this;
      if (fn === undefined) {
        this._pushHandlers.delete(route);
      } else {
        const i = list.indexOf(fn);
        if (i >= 0) list.splice(i, 1);
        if (!list.length) this._pushHandlers.delete(route);
      }
      return this;
    }

    /** Send a raw message, not an envelope: see Connection.send. */
    send(data) {
      return this.connection.send(data);
    }

    /** Close for good; pending requests fail with CLOSED. See Connection.close. */
    close(code, reason) {
      this.connection.close(code, reason);
    }

    /** Connect now; see Connection.reconnect. */
    reconnect() {
      this.connection.reconnect();
    }

    // -- internals ------------------------------------------------------------

    _takeId() {
      const id = this._nextId;
      this._nextId = id >= MAX_ID ? 1 : id + 1;
      return id;
    }

    _encode(route, id, data) {
      if (typeof route !== 'string' || !route || route.length > 255) {
        throw new RouteError('BAD_DATA', 'a route is a string of 1 to 255 characters', route, id);
      }
      // Codes of a table are valid on the socket that announced them only;
      // the table is dropped on close, so a frame queued for the next socket
      // always carries the name.
      const code = this._codes && this.connection.state === 'open' ? this._codes.get(route) : undefined;
      const envelope = { route: code === undefined ? route : code };
      if (id !== null) envelope.id = id;
      if (data !== undefined) envelope.data = data;
      let text;
      try {
        text = JSON.stringify(envelope);
      } catch (err) {
        throw new RouteError('BAD_DATA', 'data for ' + route + ' is not JSON: ' + err.message, route, id);
      }
      return text;
    }

    _onMessage(data) {
      if (typeof data !== 'string') {
        this.emit('message', data);
        return;
      }
      let env;
      try {
        env = JSON.parse(data);
      } catch (err) {
        env = null;
      }
      if (!isObject(env) || !('id' in env || 'error' in env || 'route' in env)) {
        this.emit('message', data); // raw text from the application
        return;
      }
      if (env.id !== undefined && env.id !== null) {
        this._onResponse(env);
      } else if (typeof env.route === 'number' && !env.error) {
        this._onCodedPush(env);
      } else {
        this._dispatch(env);
      }
    }

    _onResponse(env) {
      const entry = this._pending.get(env.id);
      if (!entry) return; // timed out already: nobody waits for it
      if (isObject(env.error)) {
        const e = env.error;
        this._settle(env.id, new RouteError(String(e.code || 'internal'), String(e.message || ''), entry.route, env.id));
      } else {
        this._settle(env.id, null, env.data === undefined ? null : env.data);
      }
    }

    _onCodedPush(env) {
      const name = this._names ? this._names.get(env.route) : undefined;
      if (name !== undefined) {
        env.route = name;
        this._dispatch(env);
      } else if (this._names) {
        this._emitError(new RouteError('UNKNOWN_ROUTE', 'push with route code ' + env.route + ', not in the route table', env.route));
      } else if (this._held.length >= this._opts.maxHeld) {
        this._emitError(new RouteError('QUEUE_FULL', 'more than ' + this._opts.maxHeld + ' pushes before the route table; push dropped', env.route));
      } else {
        this._held.push(env); // the table is on its way
      }
    }

    _dispatch(env) {
      let route = env.route;
      if (typeof route === 'number' && this._names && this._names.has(route)) route = this._names.get(route);
      if (env.error !== undefined) {
        const e = isObject(env.error) ? env.error : {};
        this._emitError(new RouteError(String(e.code || 'internal'), String(e.message || ''), route === undefined ? null : route));
        return;
      }
      if (typeof route !== 'string') {
        this.emit('message', JSON.stringify(env));
        return;
      }
      const data = env.data === undefined ? null : env.data;
      if (route === ROUTES_PUSH) {
        this._setTable(data);
        return;
      }
      this.emit('push', route, data);
      const list = this._pushHandlers.get(route);
      if (list) {
        for (const fn of list.slice()) {
          try {
            fn.call(this, data, route);
          } catch (err) {
            reportListenerError(err);
          }
        }
      }
    }

    _setTable(table) {
      if (!isObject(table)) {
        this._emitError(new RouteError('bad_request', 'the route table is not an object', ROUTES_PUSH));
        return;
      }
      const codes = new Map();
      const names = new Map();
      for (const name of Object.keys(table)) {
        const code = table[name];
        if (Number.isInteger(code) && code > 0) {
          codes.set(name, code);
          names.set(code, name);
        }
      }
      this._codes = codes;
      this._names = names;
      this.emit('routes', Object.fromEntries(codes));
      const held = this._held;
      this._held = [];
      for (const env of held) this._onCodedPush(env);
    }

    _onClose(code, reason, willReconnect) {
      // The next socket announces its own table.
      this._codes = this._names = null;
      this._held = [];
      for (const [id, entry] of Array.from(this._pending)) {
        if (!willReconnect) {
          this._settle(id, new RouteError('CLOSED', 'connection closed (' + code + ') before the response to ' + entry.route, entry.route, id));
        } else if (entry.gen && entry.gen <= this._gen) {
          this._settle(id, new RouteError('DISCONNECTED', 'connection lost (' + code + ') before the response to ' + entry.route, entry.route, id));
        }
      }
      this.emit('close', code, reason, willReconnect);
    }

    _settle(id, err, value) {
      const entry = this._pending.get(id);
      if (!entry) return;
      this._pending.delete(id);
      clearTimeout(entry.timer);
      if (err) entry.reject(err);
      else entry.resolve(value);
    }

    _emitError(err) {
      if (!this.emit('error', err) && err.code !== 'SOCKET_ERROR' && typeof console !== 'undefined') {
        console.warn('wsfabric: ' + (err.route ? err.route + ': ' : '') + err.code + ': ' + err.message);
      }
    }
  }

  /**
   * Open a connection to a `wsfabric.routing.Router` application (JSON codec).
   *
   * @param {string|URL|function(): string} [url] as for wsfabric.connect
   * @param {object} [options] every option of wsfabric.connect, and
   * @param {number} [options.timeout=10000] default ms a request waits for
   *   its response (0: for ever)
   * @param {boolean} [options.compressRoutes=false] ask the server for its
   *   route table (`routes=1`) and send route codes instead of names
   * @param {number} [options.maxHeld=1000] pushes with a route code kept
   *   while the table has not arrived
   * @param {string|string[]} [options.protocols=['wsfabric.json']]
   * @returns {Client}
   */
  function client(url, options) {
    if (
      options === undefined &&
      url !== null &&
      typeof url === 'object' &&
      !(typeof URL !== 'undefined' && url instanceof URL)
    ) {
      return new Client(undefined, url);
    }
    return new Client(url, options);
  }

  return Object.freeze({
    version: VERSION,
    connect: connect,
    Connection: Connection,
    Emitter: Emitter,
    backoffDelay: backoffDelay,
    DEFAULTS: DEFAULTS,
    client: client,
    Client: Client,
    RouteError: RouteError,
    CLIENT_DEFAULTS: CLIENT_DEFAULTS,
  });
});
