/**
 * profilestream's browser SDK: XDM ExperienceEvents from a page to the inlet's batch route
 * (`POST {endpoint}/collection/batch/{connectionId}`, README "Web SDK").
 *
 * Public surface: `init(options)` makes the page's client, and `sendEvent`, `setIdentity`, `clearIdentity`,
 * `setConsent`, `flush` and `close` act on it; `createClient(options)` makes a client of its own with the same
 * methods. No runtime dependencies; everything the browser provides (fetch, storage, timers, the clock, randomness,
 * document, window, navigator) can be injected, which is how `node --test` drives it.
 *
 * Delivery is at least once: an event stays in the queue (kept in storage once consent is "y") until the inlet
 * accepted it or rejected it as invalid, so a retry or a reload may send it twice, with the same `_id`.
 */

const EXPERIENCE_EVENT = "https://ns.adobe.com/xdm/context/experienceevent";
const SCHEMA_CONTENT_TYPE = "application/vnd.adobe.xed-full+json;version=1";
const MAX_BATCH_ENTRIES = 1024; // the inlet's max_batch_entries
const MAX_REQUEST_BYTES = 1048576; // the inlet's max_request_bytes
const BEACON_BYTES = 60 * 1024; // browsers allow about 64 KiB of beacons and keepalive fetches in flight
const BATCH_OPENING = '{"messages":[';
const BATCH_CLOSING = "]}";
const RETRYABLE = new Set([408, 429, 500, 502, 503, 504]);
const STOPPING = new Set([401, 403, 404]);
const AUTHENTICATED_STATES = new Set(["ambiguous", "authenticated", "loggedOut"]);
const CONSENTS = new Set(["y", "n", "pending"]);
const ECID_NAME = "profilestream_ecid";
const ECID_DIGITS = 38;
const ECID_COOKIE_SECONDS = 390 * 24 * 3600;
const MAX_RETRY_AFTER_MS = 24 * 3600 * 1000;
const IDENTITIES_KEY = "profilestream.identities";
const CONSENT_KEY = "profilestream.consent";

const DEFAULTS = {
  endpoint: undefined,
  connectionId: undefined,
  schemaRef: EXPERIENCE_EVENT,
  datasetId: undefined,
  token: undefined,
  batchSize: 50,
  flushIntervalMs: 1000,
  maxBatchBytes: MAX_REQUEST_BYTES,
  maxQueue: 1000,
  autoPageViews: false,
  autoClicks: false,
  defaultConsent: "y",
  gzip: false,
  syncValidation: false,
  baseRetryDelayMs: 1000,
  maxRetryDelayMs: 60000,
  onError: undefined,
};

const utf8 = new TextEncoder();

/** A client of its own: the methods `init` offers at module level, on this client. */
export function createClient(options) {
  return new Client(options);
}

class Client {
  constructor(options = {}) {
    const o = { ...DEFAULTS, ...options };
    if (typeof o.endpoint !== "string" || !o.connectionId) {
      throw new TypeError("profilestream: init needs an endpoint and a connectionId");
    }
    if (!CONSENTS.has(o.defaultConsent)) throw new TypeError(`profilestream: defaultConsent is y, n or pending`);
    this._o = o;
    const g = globalThis;
    this._fetch = o.fetch || (g.fetch && g.fetch.bind(g));
    this._document = o.document !== undefined ? o.document : g.document;
    this._window = o.window !== undefined ? o.window : g.window;
    this._navigator = o.navigator !== undefined ? o.navigator : g.navigator;
    this._now = o.now || Date.now;
    this._setTimeout = o.setTimeout || g.setTimeout.bind(g);
    this._clearTimeout = o.clearTimeout || g.clearTimeout.bind(g);
    this._random = o.random || Math.random;
    this._randomUUID = o.randomUUID || (() => g.crypto.randomUUID());
    this._storage = safeStorage(o.storage !== undefined ? o.storage : defaultStorage());
    this._url = `${o.endpoint.replace(/\/+$/, "")}/collection/batch/${encodeURIComponent(o.connectionId)}`;
    if (o.syncValidation) this._url += "?syncValidation=true";
    this._queueKey = `profilestream.queue.${o.connectionId}`;
    this._batchSize = Math.max(1, Math.min(o.batchSize, MAX_BATCH_ENTRIES));
    this._countCap = this._batchSize; // lowered when the inlet answers 413
    this._maxBatchBytes = Math.min(o.maxBatchBytes, MAX_REQUEST_BYTES);
    const ref = typeof o.schemaRef === "string" ? { id: o.schemaRef, contentType: SCHEMA_CONTENT_TYPE } : o.schemaRef;
    this._header = { schemaRef: ref };
    if (o.datasetId) this._header.datasetId = o.datasetId;

    this._queue = []; // entries {id, json, bytes, sending}, oldest first
    this._held = new Set(); // the ids of the events this client held when it last read or wrote the stored queue
    this._identitiesChanged = false;
    this._attempt = 0;
    this._retryAt = 0;
    this._timer = null;
    this._timerAt = Infinity;
    this._sending = null;
    this._stopped = false;
    this._consent = readConsent(this._storage) || o.defaultConsent;
    this._ecid = readCookie(this._document, ECID_NAME) || validEcid(this._storage.get(ECID_NAME)) || this._newEcid();
    this._identities = {};
    if (this._consent === "n") {
      this._forget();
    } else {
      this._identities = storedIdentities(this._storage.get(IDENTITIES_KEY));
      this._restoreQueue();
      this._store();
    }
    this._listeners = [];
    this._listen(this._window, "pagehide", () => this._beacon());
    // Back online after a network error: retry now rather than at the end of the back-off.
    this._listen(this._window, "online", () => {
      if (!this._offline) return;
      this._retryAt = 0;
      this._clearTimer();
      this._schedule();
    });
    this._listen(this._document, "visibilitychange", () => {
      if (this._document.visibilityState === "hidden") this._beacon();
    });
    if (o.autoClicks) this._listen(this._document, "click", (event) => this._clicked(event));
    if (o.autoPageViews) this.sendEvent(pageView(this._document));
    this._schedule();
  }

  /** Queues `xdm` as an ExperienceEvent; returns its `_id`, or null when consent is "n". */
  sendEvent(xdm = {}) {
    if (!xdm || typeof xdm !== "object" || Array.isArray(xdm))
      throw new TypeError("profilestream: an event is an object");
    if (this._consent === "n") return null;
    const entity = { ...xdm };
    entity._id = entity._id || this._randomUUID();
    entity.timestamp = entity.timestamp || new Date(this._now()).toISOString();
    entity.identityMap = this._identityMap(xdm.identityMap);
    const envelope = {
      header: this._header,
      body: { xdmMeta: { schemaRef: this._header.schemaRef }, xdmEntity: entity },
    };
    this._enqueue(entryOf(envelope));
    return entity._id;
  }

  /** Adds `id` in `namespace` to every later event (sign-in); a null `id` removes the namespace (sign-out). */
  setIdentity(namespace, id, authenticatedState = "authenticated") {
    if (!namespace || namespace === "ECID")
      throw new TypeError("profilestream: the namespace is not ECID, which the SDK keeps");
    if (id === null || id === undefined) {
      delete this._identities[namespace];
    } else {
      if (!AUTHENTICATED_STATES.has(authenticatedState)) {
        throw new TypeError(`profilestream: authenticatedState is one of ${[...AUTHENTICATED_STATES].join(", ")}`);
      }
      this._identities[namespace] = { id: String(id), authenticatedState };
    }
    this._identitiesChanged = true;
    this._store();
  }

  /** Removes `namespace`'s identity, or every identity set when no namespace is given. */
  clearIdentity(namespace) {
    if (namespace === undefined) this._identities = {};
    else delete this._identities[namespace];
    this._identitiesChanged = true;
    this._store();
  }

  /** `{collect: "y" | "n" | "pending"}`: "y" sends what waits, "pending" holds events, "n" drops them all. */
  setConsent({ collect } = {}) {
    if (!CONSENTS.has(collect)) throw new TypeError("profilestream: setConsent({collect}) takes y, n or pending");
    this._consent = collect;
    this._storage.set(CONSENT_KEY, collect);
    if (collect === "n") this._forget();
    else this._store();
    this._schedule();
  }

  /** Sends every queued event now (unless backing off); resolves once the requests are answered. */
  flush() {
    return this._drain(true);
  }

  /** Stops timers and listeners; the queue stays in storage for the next page. */
  close() {
    this._stopped = true;
    this._clearTimer();
    for (const [target, type, listener] of this._listeners) target.removeEventListener(type, listener);
    this._listeners = [];
  }

  /** Events queued and not yet accepted (for tests and the console). */
  get queued() {
    return this._queue.length;
  }

  get ecid() {
    return this._ecid;
  }

  _identityMap(given) {
    const map = {};
    let primary = false;
    for (const [namespace, items] of Object.entries(given || {})) {
      map[namespace] = [...items];
      primary = primary || items.some((item) => item.primary === true);
    }
    const ecid = { id: this._ecid, authenticatedState: "ambiguous", primary: !primary };
    map.ECID = [ecid, ...(map.ECID || [])];
    for (const [namespace, item] of Object.entries(this._identities)) {
      map[namespace] = [...(map[namespace] || []), { ...item }];
    }
    return map;
  }

  _enqueue(entry) {
    if (entry.bytes + BATCH_OPENING.length + BATCH_CLOSING.length > this._maxBatchBytes) {
      this._error({ status: 0, message: "an event is larger than a batch may be", dropped: 1 });
      return;
    }
    this._queue.push(entry);
    const over = this._queue.length - this._o.maxQueue;
    if (over > 0) {
      this._queue.splice(0, over);
      this._error({ status: 0, message: "the queue is full: the oldest events are dropped", dropped: over });
    }
    this._store();
    this._schedule();
  }

  _restoreQueue() {
    this._queue = this._storedQueue().slice(-this._o.maxQueue);
    this._held = new Set(this._queue.map((entry) => entry.id));
  }

  /** Writes the ECID, identities and queue, once consent is "y" (nothing is stored before), at the end of the
   * current task: a burst of events is written once, and no reload can come between a task and its microtasks. */
  _store() {
    if (this._storing) return;
    this._storing = true;
    queueMicrotask(() => {
      this._storing = false;
      this._write();
    });
  }

  _write() {
    if (this._consent !== "y") return;
    writeCookie(this._document, ECID_NAME, this._ecid);
    this._storage.set(ECID_NAME, this._ecid);
    if (this._identitiesChanged) this._storage.set(IDENTITIES_KEY, JSON.stringify(this._identities));
    this._identitiesChanged = false;
    // Other tabs of the site share the stored queue: what they added (events this client never held) is kept.
    let others = this._storedQueue().filter((entry) => !this._held.has(entry.id));
    for (;;) {
      const all = [...others, ...this._queue];
      if (this._storage.set(this._queueKey, `[${all.map((entry) => entry.json).join(",")}]`)) break;
      // Over the storage quota: keep the newer half, dropping other tabs' events first. A storage that takes not
      // even an empty queue is not full but refused (private browsing, storage disabled): the queue lives in memory.
      const dropped = Math.ceil(all.length / 2);
      if (!dropped || !this._storage.set(this._queueKey, "[]")) break;
      const theirs = Math.min(dropped, others.length);
      others = others.slice(theirs);
      this._queue.splice(0, dropped - theirs);
      this._error({ status: 0, message: "storage is full: the oldest events are dropped", dropped });
    }
    this._held = new Set(this._queue.map((entry) => entry.id));
  }

  _storedQueue() {
    const stored = parseJson(this._storage.get(this._queueKey), []);
    return Array.isArray(stored) ? stored.map(entryOf) : [];
  }

  _forget() {
    this._queue = [];
    this._identities = {};
    for (const key of [this._queueKey, IDENTITIES_KEY, ECID_NAME]) this._storage.remove(key);
    writeCookie(this._document, ECID_NAME, "", 0);
  }

  /** 38 decimal digits from a random UUID's 122 random bits. */
  _newEcid() {
    const number = BigInt(`0x${this._randomUUID().replace(/-/g, "")}`) % 10n ** BigInt(ECID_DIGITS);
    return String(number).padStart(ECID_DIGITS, "0");
  }

  _canSend() {
    return this._consent === "y" && !this._stopped && this._fetch;
  }

  _ready() {
    return this._queue.filter((entry) => !entry.sending);
  }

  /** Starts a batch now when enough events wait, else wakes up when the oldest has waited flushIntervalMs. */
  _schedule() {
    if (!this._canSend() || this._sending) return;
    const ready = this._ready().length;
    if (!ready) return;
    const now = this._now();
    if (this._retryAt > now) this._wakeAt(this._retryAt);
    else if (ready >= this._countCap) this._drain(false);
    else this._wakeAt(now + this._o.flushIntervalMs);
  }

  _wakeAt(at) {
    if (this._timer !== null && this._timerAt <= at) return;
    this._clearTimer();
    this._timerAt = at;
    this._timer = this._setTimeout(
      () => {
        this._timer = null;
        this._timerAt = Infinity;
        this._drain(true);
      },
      Math.max(0, at - this._now()),
    );
  }

  _clearTimer() {
    if (this._timer !== null) this._clearTimeout(this._timer);
    this._timer = null;
    this._timerAt = Infinity;
  }

  /** Sends batches one request at a time: full ones, or every event once `all` (a timer, flush) asked. */
  _drain(all) {
    this._all = this._all || all;
    if (this._sending) return this._sending;
    this._sending = (async () => {
      while (this._canSend() && this._retryAt <= this._now()) {
        const ready = this._ready();
        if (!ready.length || (!this._all && ready.length < this._countCap)) break;
        await this._send(this._batchOf(ready, this._countCap, this._maxBatchBytes));
      }
    })().finally(() => {
      this._sending = null;
      this._all = false;
      this._schedule();
    });
    return this._sending;
  }

  /** The longest run of `ready` events, from the oldest, within `count` and `bytes`; each marked as sending. */
  _batchOf(ready, count, bytes) {
    const batch = [];
    let size = BATCH_OPENING.length + BATCH_CLOSING.length;
    for (const entry of ready) {
      const more = entry.bytes + (batch.length ? 1 : 0);
      if (batch.length >= count || (batch.length && size + more > bytes)) break;
      size += more;
      entry.sending = true;
      batch.push(entry);
    }
    return batch;
  }

  async _send(batch, keepalive = false) {
    const body = BATCH_OPENING + batch.map((entry) => entry.json).join(",") + BATCH_CLOSING;
    let response;
    try {
      response = await this._fetch(this._url, await this._request(body, keepalive));
    } catch {
      this._retryLater(batch, null);
      this._offline = true;
      return;
    }
    this._offline = false;
    const status = response.status;
    if (status === 207 || (status >= 200 && status < 300)) {
      await this._answered(batch, response);
    } else if (RETRYABLE.has(status)) {
      this._retryLater(batch, retryAfterMs(response.headers.get("Retry-After"), this._now()));
    } else if (status === 413 && batch.length > 1) {
      this._countCap = Math.max(1, Math.floor(batch.length / 2));
      this._release(batch);
    } else if (STOPPING.has(status)) {
      this._release(batch);
      this._stopped = true;
      this._clearTimer();
      this._error({ status, message: `HTTP ${status}: sending stops; the queue is kept`, dropped: 0 });
    } else {
      this._remove(batch);
      this._error({ status, message: `HTTP ${status}: the batch is dropped`, dropped: batch.length });
    }
  }

  /** The fetch options: JSON sent as text/plain, which the inlet judges as JSON, so that a request with no token
   * and no gzip is a simple CORS request, without a preflight. */
  async _request(body, keepalive) {
    const headers = { "Content-Type": "text/plain;charset=UTF-8" };
    if (this._o.token) headers.Authorization = `Bearer ${this._o.token}`;
    let data = body;
    if (this._o.gzip && !keepalive && typeof CompressionStream === "function") {
      const stream = new Blob([body]).stream().pipeThrough(new CompressionStream("gzip"));
      data = await new Response(stream).arrayBuffer();
      headers["Content-Encoding"] = "gzip";
    }
    return { method: "POST", headers, body: data, keepalive, credentials: "omit" };
  }

  /** A 2xx: each 207 entry says accepted (`xactionId`), rejected for good, or failed retryably. */
  async _answered(batch, response) {
    let responses = null;
    if (response.status === 207) {
      const answer = await response.json().catch(() => null);
      responses = answer && Array.isArray(answer.responses) ? answer.responses : [];
    }
    const done = [];
    const again = [];
    let rejected = 0;
    let reason = "";
    batch.forEach((entry, index) => {
      const answer = responses ? responses[index] : { xactionId: "" };
      if (answer && typeof answer.xactionId === "string") {
        done.push(entry);
      } else if (answer && answer.statusCode && !RETRYABLE.has(answer.statusCode)) {
        done.push(entry);
        rejected += 1;
        reason = reason || String(answer.message || answer.statusCode);
      } else {
        again.push(entry);
      }
    });
    this._remove(done);
    if (rejected) this._error({ status: 207, message: `rejected as invalid: ${reason}`, dropped: rejected });
    if (again.length) this._retryLater(again, null);
    else this._attempt = 0;
  }

  /** Back-off: between half and all of base × 2^attempt (at most maxRetryDelayMs), and never before `afterMs`. */
  _retryLater(batch, afterMs) {
    this._release(batch);
    const ceiling = Math.min(this._o.maxRetryDelayMs, this._o.baseRetryDelayMs * 2 ** this._attempt);
    const backoff = ceiling / 2 + this._random() * (ceiling / 2);
    this._attempt += 1;
    this._retryAt = this._now() + Math.max(backoff, afterMs || 0);
  }

  _release(batch) {
    for (const entry of batch) entry.sending = false;
  }

  _remove(batch) {
    const gone = new Set(batch);
    this._queue = this._queue.filter((entry) => !gone.has(entry));
    this._store();
  }

  /** The page is going away or hidden: hand what is queued to the browser, which sends it after the page is gone. */
  _beacon() {
    if (!this._canSend() || this._retryAt > this._now()) return;
    const batch = this._batchOf(this._ready(), this._countCap, Math.min(this._maxBatchBytes, BEACON_BYTES));
    if (!batch.length) return;
    if (this._o.token || !this._navigator || !this._navigator.sendBeacon) {
      // A beacon carries no Authorization header: a keepalive fetch does, and its answer is read if the page stays.
      this._send(batch, true);
      return;
    }
    const body = BATCH_OPENING + batch.map((entry) => entry.json).join(",") + BATCH_CLOSING;
    if (this._navigator.sendBeacon(this._url, body)) this._remove(batch);
    else this._release(batch);
  }

  _clicked(event) {
    const target = event && event.target;
    const link = target && target.closest ? target.closest("a[href]") : null;
    if (!link) return;
    const here = this._document && this._document.location;
    // An SVG link's href is an object: its attribute is the address.
    let href = typeof link.href === "string" ? link.href : String(link.getAttribute("href"));
    let type = "other";
    try {
      const url = new URL(href, here && here.href);
      href = url.href;
      if (here && url.host !== here.host) type = "exit";
    } catch {
      // An address URL cannot parse is sent as written, as "other".
    }
    const name = (link.textContent || "").trim().replace(/\s+/g, " ").slice(0, 100);
    const webInteraction = { type, URL: href, linkClicks: { value: 1 } };
    if (name) webInteraction.name = name;
    this.sendEvent({ eventType: "web.webinteraction.linkClicks", web: { webInteraction } });
  }

  _listen(target, type, listener) {
    if (!target || !target.addEventListener) return;
    target.addEventListener(type, listener);
    this._listeners.push([target, type, listener]);
  }

  _error(report) {
    if (this._o.onError) this._o.onError(report);
  }
}

function entryOf(envelope) {
  const json = JSON.stringify(envelope);
  const id = envelope && envelope.body && envelope.body.xdmEntity && envelope.body.xdmEntity._id;
  return { id, json, bytes: utf8.encode(json).length, sending: false };
}

function pageView(document) {
  const webPageDetails = { pageViews: { value: 1 } };
  const location = document && document.location;
  if (location) webPageDetails.URL = location.href;
  webPageDetails.name = (document && document.title) || (location && location.pathname) || "";
  const web = { webPageDetails };
  if (document && document.referrer) web.webReferrer = { URL: document.referrer };
  return { eventType: "web.webpagedetails.pageViews", web };
}

/** Milliseconds from `now` that a `Retry-After` value (seconds, or an HTTP date) asks for; null when absent. */
export function retryAfterMs(value, now) {
  if (!value) return null;
  const text = value.trim();
  const ms = /^\d+$/.test(text) ? Number(text) * 1000 : Date.parse(text) - now;
  return Number.isNaN(ms) ? null : Math.min(Math.max(ms, 0), MAX_RETRY_AFTER_MS);
}

/** The identities a page stored, each checked: storage is the user's to change. */
function storedIdentities(text) {
  const stored = parseJson(text, {});
  const identities = {};
  for (const [namespace, item] of Object.entries(stored && typeof stored === "object" ? stored : {})) {
    if (item && typeof item.id === "string" && AUTHENTICATED_STATES.has(item.authenticatedState)) {
      identities[namespace] = { id: item.id, authenticatedState: item.authenticatedState };
    }
  }
  return identities;
}

function readConsent(storage) {
  const stored = storage.get(CONSENT_KEY);
  return CONSENTS.has(stored) ? stored : null;
}

function validEcid(value) {
  return typeof value === "string" && /^\d{38}$/.test(value) ? value : null;
}

function readCookie(document, name) {
  try {
    const found = (document && document.cookie ? document.cookie : "").match(new RegExp(`(?:^|;\\s*)${name}=([^;]*)`));
    return found ? validEcid(decodeURIComponent(found[1])) : null;
  } catch {
    return null;
  }
}

function writeCookie(document, name, value, maxAge = ECID_COOKIE_SECONDS) {
  if (!document || !("cookie" in document)) return;
  const secure = document.location && document.location.protocol === "https:" ? "; Secure" : "";
  try {
    document.cookie = `${name}=${value}; Max-Age=${maxAge}; Path=/; SameSite=Lax${secure}`;
  } catch {
    // Cookies disabled: localStorage holds the ECID.
  }
}

function parseJson(text, otherwise) {
  try {
    return text ? JSON.parse(text) : otherwise;
  } catch {
    return otherwise;
  }
}

function defaultStorage() {
  try {
    return globalThis.localStorage || null;
  } catch {
    return null; // localStorage refused (a sandboxed frame, storage disabled)
  }
}

/** get / set (true when written) / remove over a Storage-like object, never throwing; in memory without one. */
function safeStorage(storage) {
  const memory = new Map();
  const target = storage || {
    getItem: (key) => (memory.has(key) ? memory.get(key) : null),
    setItem: (key, value) => memory.set(key, String(value)),
    removeItem: (key) => memory.delete(key),
  };
  return {
    get(key) {
      try {
        return target.getItem(key);
      } catch {
        return null;
      }
    },
    set(key, value) {
      try {
        target.setItem(key, value);
        return true;
      } catch {
        return false;
      }
    },
    remove(key) {
      try {
        target.removeItem(key);
      } catch {
        // nothing to remove from a storage that refuses
      }
    },
  };
}

let pageClient = null;

function client() {
  if (!pageClient) throw new Error("profilestream: call init(options) first");
  return pageClient;
}

/** Makes the page's client (closing one made before) and returns it. */
export function init(options) {
  if (pageClient) pageClient.close();
  pageClient = createClient(options);
  return pageClient;
}

export const sendEvent = (xdm) => client().sendEvent(xdm);
export const setIdentity = (namespace, id, authenticatedState) =>
  client().setIdentity(namespace, id, authenticatedState);
export const clearIdentity = (namespace) => client().clearIdentity(namespace);
export const setConsent = (consent) => client().setConsent(consent);
export const flush = () => client().flush();
export const close = () => client().close();
