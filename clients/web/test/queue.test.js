import assert from "node:assert/strict";
import { test } from "node:test";

import { answer, FakeClock, fakeFetch, FakeTarget, harness, MemoryStorage, settle } from "./fakes.js";

const OFFLINE = () => answer(503);

test("the queue survives a reload: a new client over the same storage sends what the old one could not", async () => {
  const storage = new MemoryStorage();
  const first = harness({ storage, fetch: fakeFetch([OFFLINE, OFFLINE, OFFLINE]), batchSize: 2 });
  const ids = [first.client.sendEvent({ eventType: "a" }), first.client.sendEvent({ eventType: "b" })];
  first.client.sendEvent({ eventType: "c" });
  await first.clock.advance(0);
  assert.equal(first.client.queued, 3);
  first.client.close();

  const second = harness({ storage, batchSize: 10 });
  assert.equal(second.client.queued, 3);
  assert.equal(second.client.ecid, first.client.ecid, "the device keeps its ECID");
  await second.client.flush();
  assert.deepEqual(second.fetch.requests[0].ids.slice(0, 2), ids);
  assert.equal(second.fetch.requests[0].messages.length, 3);
  await settle();
  assert.equal(storage.getItem("profilestream.queue.web"), "[]");
});

test("two tabs share the stored queue and identities: neither writes away what the other stored", async () => {
  const storage = new MemoryStorage();
  const stored = () => JSON.parse(storage.getItem("profilestream.queue.web")).map((e) => e.body.xdmEntity.eventType);
  const first = harness({ storage, batchSize: 100, flushIntervalMs: 60000 });
  const second = harness({ storage, fetch: fakeFetch([OFFLINE]), batchSize: 100, flushIntervalMs: 60000 });
  first.client.sendEvent({ eventType: "a" });
  second.client.sendEvent({ eventType: "b" });
  await settle();
  first.client.setIdentity("CRMID", "c-1");
  first.client.sendEvent({ eventType: "c" });
  await settle();
  second.client.sendEvent({ eventType: "d" });
  await settle();
  assert.deepEqual(stored().sort(), ["a", "b", "c", "d"]);
  assert.match(storage.getItem("profilestream.identities"), /c-1/);

  await first.client.flush();
  await settle();
  assert.deepEqual(
    first.fetch.requests[0].messages.map((m) => m.body.xdmEntity.eventType),
    ["a", "c"],
  );
  assert.deepEqual(stored(), ["b", "d"], "what a tab delivered leaves the stored queue, the other tab's stays");
  assert.equal(harness({ storage }).client.queued, 2);
});

test("the queue is bounded: beyond maxQueue the oldest events are dropped, in memory and in storage", async () => {
  const storage = new MemoryStorage();
  const { client, errors } = harness({ storage, fetch: fakeFetch([OFFLINE]), maxQueue: 5, batchSize: 100 });
  const ids = Array.from({ length: 8 }, () => client.sendEvent({ eventType: "a" }));
  await settle();
  assert.equal(client.queued, 5);
  assert.equal(
    errors.reduce((sum, error) => sum + error.dropped, 0),
    3,
  );
  const stored = JSON.parse(storage.getItem("profilestream.queue.web"));
  assert.deepEqual(
    stored.map((envelope) => envelope.body.xdmEntity._id),
    ids.slice(3),
  );
  const reloaded = harness({ storage, maxQueue: 2 });
  assert.equal(reloaded.client.queued, 2, "a restored queue is bounded too");
});

test("a storage quota drops the oldest half until the queue fits", async () => {
  const storage = new MemoryStorage(6000);
  const { client, errors } = harness({ storage, fetch: fakeFetch([OFFLINE]), batchSize: 100 });
  for (let n = 0; n < 20; n++) client.sendEvent({ eventType: "a" });
  await settle();
  assert.ok(client.queued < 20 && client.queued > 0, `${client.queued} queued`);
  assert.ok(errors.some((error) => error.message.startsWith("storage is full")));
  assert.equal(JSON.parse(storage.getItem("profilestream.queue.web")).length, client.queued);
});

test("a storage that throws on every call leaves the SDK working in memory", async () => {
  const refusing = {
    getItem() {
      throw new Error("SecurityError");
    },
    setItem() {
      throw new Error("SecurityError");
    },
    removeItem() {
      throw new Error("SecurityError");
    },
  };
  const { client, fetch, errors } = harness({ storage: refusing, batchSize: 100 });
  for (let n = 0; n < 3; n++) client.sendEvent({ eventType: "a" });
  await settle();
  assert.equal(client.queued, 3, "events are kept in memory, not dropped as if storage were full");
  await client.flush();
  assert.equal(fetch.requests[0].messages.length, 3);
  assert.deepEqual(errors, []);
});

test("on pagehide what is queued leaves as a text/plain beacon, and leaves the queue", async () => {
  const beacons = [];
  const navigator = { sendBeacon: (url, body) => beacons.push({ url, body }) > 0 };
  const window = new FakeTarget();
  const { client, fetch } = harness({ navigator, window, batchSize: 10, flushIntervalMs: 60000 });
  const ids = [client.sendEvent({ eventType: "a" }), client.sendEvent({ eventType: "b" })];
  window.fire("pagehide");
  assert.equal(beacons.length, 1);
  assert.equal(beacons[0].url, "https://inlet.test/collection/batch/web");
  assert.equal(typeof beacons[0].body, "string", "a string body is sent as text/plain");
  assert.deepEqual(
    JSON.parse(beacons[0].body).messages.map((message) => message.body.xdmEntity._id),
    ids,
  );
  assert.equal(client.queued, 0);
  assert.equal(fetch.requests.length, 0);
});

test("a hidden page beacons at most 60 KiB; the rest stays queued, as does what a refused beacon held", async () => {
  const beacons = [];
  let accept = true;
  const navigator = { sendBeacon: (url, body) => accept && beacons.push(body) > 0 };
  const { client, document } = harness({ navigator, batchSize: 100, flushIntervalMs: 60000 });
  for (let n = 0; n < 10; n++) client.sendEvent({ eventType: "a", _tenant: { filler: "x".repeat(10000) } });
  document.visibilityState = "hidden";
  document.fire("visibilitychange");
  assert.ok(beacons[0].length <= 60 * 1024);
  assert.equal(client.queued, 10 - JSON.parse(beacons[0]).messages.length);
  accept = false;
  const before = client.queued;
  document.fire("visibilitychange");
  assert.equal(client.queued, before);
});

test("with a token the page's last events go by keepalive fetch, which carries the Authorization header", async () => {
  const navigator = { sendBeacon: () => assert.fail("a beacon cannot carry the token") };
  const clock = new FakeClock();
  const fetch = fakeFetch([], clock);
  const { client, window } = harness({
    clock,
    fetch,
    navigator,
    token: "t0ken",
    batchSize: 10,
    flushIntervalMs: 60000,
  });
  client.sendEvent({ eventType: "a" });
  window.fire("pagehide");
  await settle();
  assert.equal(fetch.requests[0].init.keepalive, true);
  assert.equal(fetch.requests[0].init.headers.Authorization, "Bearer t0ken");
  assert.equal(client.queued, 0);
});

test("no beacon while backing off after a 429", async () => {
  const beacons = [];
  const navigator = { sendBeacon: (url, body) => beacons.push(body) > 0 };
  const { client, clock, window } = harness({ navigator, fetch: fakeFetch([answer(429)]), batchSize: 1 });
  client.sendEvent({ eventType: "a" });
  await clock.advance(0);
  window.fire("pagehide");
  assert.equal(beacons.length, 0);
  assert.equal(client.queued, 1);
});
