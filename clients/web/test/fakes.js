// Stand-ins for what a browser gives the SDK: a clock with timers, storage, fetch, event targets, a page.

import { createClient } from "../src/profilestream.js";

export const ENDPOINT = "https://inlet.test";
export const BATCH_URL = `${ENDPOINT}/collection/batch/web`;

/** Time that moves only when a test says so, with the timers due by then. */
export class FakeClock {
  constructor(start = Date.parse("2026-12-01T09:00:00Z")) {
    this.time = start;
    this.timers = new Map();
    this.nextId = 1;
    this.now = () => this.time;
    this.setTimeout = (callback, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.time + Math.max(0, ms), callback });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
  }

  /** The delays of the timers now set, from now. */
  pending() {
    return [...this.timers.values()].map((timer) => timer.at - this.time).sort((a, b) => a - b);
  }

  /** Moves time on by `ms`, running each timer when its time comes, and lets the promises it starts settle. */
  async advance(ms) {
    const end = this.time + ms;
    await settle();
    for (;;) {
      const due = [...this.timers.entries()].filter(([, timer]) => timer.at <= end).sort((a, b) => a[1].at - b[1].at);
      if (!due.length) break;
      const [id, timer] = due[0];
      this.timers.delete(id);
      this.time = timer.at;
      timer.callback();
      await settle();
    }
    this.time = end;
    await settle();
  }
}

export async function settle() {
  for (let round = 0; round < 20; round++) await new Promise((resolve) => setImmediate(resolve));
}

/** localStorage in memory, optionally refusing writes past `quota` characters. */
export class MemoryStorage {
  constructor(quota = Infinity) {
    this.items = new Map();
    this.quota = quota;
  }
  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }
  setItem(key, value) {
    const others = [...this.items].reduce((sum, [k, v]) => sum + (k === key ? 0 : v.length), 0);
    if (others + String(value).length > this.quota) throw new Error("QuotaExceededError");
    this.items.set(key, String(value));
  }
  removeItem(key) {
    this.items.delete(key);
  }
}

/** A Response-like answer. */
export function answer(status, body = null, headers = {}) {
  const names = Object.fromEntries(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value]));
  return {
    status,
    headers: { get: (name) => names[name.toLowerCase()] ?? null },
    json: async () => body,
  };
}

/** The 207 the inlet gives a batch: for each message, true (accepted) or a statusCode. */
export function multiStatus(verdicts) {
  return answer(207, {
    inletId: "web",
    batchId: "1:a:0",
    receivedTimeMs: 1,
    responses: verdicts.map((verdict, index) =>
      verdict === true ? { xactionId: `1:a:0:${index}` } : { statusCode: verdict, message: "bad" },
    ),
  });
}

/** fetch that records each request (and when, by `clock`) and answers from `script` (answers, errors to throw, or
 * functions of the request), then with 207s accepting everything. */
export function fakeFetch(script = [], clock = null) {
  const requests = [];
  const fetch = async (url, init) => {
    const messages = JSON.parse(init.body).messages;
    const ids = messages.map((message) => message.body.xdmEntity._id);
    const request = { url, init, messages, ids, at: clock && clock.now() };
    requests.push(request);
    const next = script.length ? script.shift() : null;
    if (next instanceof Error) throw next;
    if (typeof next === "function") return next(request);
    return next || multiStatus(messages.map(() => true));
  };
  fetch.requests = requests;
  return fetch;
}

/** An addEventListener target whose events a test fires. */
export class FakeTarget {
  constructor(fields = {}) {
    Object.assign(this, fields);
    this.listeners = new Map();
  }
  addEventListener(type, listener) {
    this.listeners.set(type, [...(this.listeners.get(type) || []), listener]);
  }
  removeEventListener(type, listener) {
    this.listeners.set(
      type,
      (this.listeners.get(type) || []).filter((other) => other !== listener),
    );
  }
  fire(type, event = {}) {
    for (const listener of this.listeners.get(type) || []) listener(event);
  }
}

/** A page: a document with a cookie jar, a location, a title, and visibilityState. */
export function fakeDocument(url = "https://shop.test/home", title = "Home") {
  const jar = new Map();
  const location = new URL(url);
  const document = new FakeTarget({ title, referrer: "", visibilityState: "visible", location });
  Object.defineProperty(document, "cookie", {
    get: () => [...jar].map(([name, value]) => `${name}=${value}`).join("; "),
    set: (text) => {
      const [pair, ...attributes] = text.split(";");
      const [name, value] = pair.split("=");
      if (attributes.some((attribute) => attribute.trim().toLowerCase() === "max-age=0")) jar.delete(name.trim());
      else jar.set(name.trim(), value);
    },
  });
  document.jar = jar;
  return document;
}

let uuids = 0;

/** A client over fakes; returns it with them. `options` override the client's options. */
export function harness(options = {}) {
  const clock = options.clock || new FakeClock();
  const fetch = options.fetch || fakeFetch();
  const storage = options.storage || new MemoryStorage();
  const document = options.document || fakeDocument();
  const window = options.window || new FakeTarget();
  const errors = [];
  const client = createClient({
    endpoint: ENDPOINT,
    connectionId: "web",
    random: () => 0.5,
    randomUUID: () => `00000000-0000-4000-8000-${String(++uuids).padStart(12, "0")}`,
    onError: (report) => errors.push(report),
    navigator: null,
    ...options,
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    fetch,
    storage,
    document,
    window,
  });
  return { client, clock, fetch, storage, document, window, errors };
}
