import assert from "node:assert/strict";
import { test } from "node:test";

import { retryAfterMs } from "../src/profilestream.js";
import { answer, FakeClock, fakeFetch, harness, multiStatus } from "./fakes.js";

/** A client that sends one event, whose first requests get `script`; `random` sets the jitter (0: half the
 * ceiling, 1: all of it). */
function retrying(script, options = {}) {
  const clock = new FakeClock();
  const fetch = fakeFetch(script, clock);
  const run = harness({ clock, fetch, batchSize: 1, baseRetryDelayMs: 1000, maxRetryDelayMs: 8000, ...options });
  run.client.sendEvent({ eventType: "a" });
  return run;
}

/** The times of the requests made within `until` milliseconds, from the first. */
async function requestTimes(run, until) {
  await run.clock.advance(until);
  return run.fetch.requests.map((request) => request.at - run.fetch.requests[0].at);
}

test("503s are retried with exponential back-off, capped at maxRetryDelayMs", async () => {
  const run = retrying([answer(503), answer(503), answer(503), answer(503), answer(503)], { random: () => 1 });
  const times = await requestTimes(run, 40000);
  // delays 1, 2, 4, 8 and 8 (the cap) seconds after each failure: all of the ceiling with random() = 1
  assert.deepEqual(times, [0, 1000, 3000, 7000, 15000, 23000]);
  assert.equal(run.client.queued, 0);
});

test("jitter keeps each delay between half and all of its ceiling", async () => {
  for (const [random, expected] of [
    [0, [0, 500, 1500, 3500]],
    [0.5, [0, 750, 2250, 5250]],
  ]) {
    const run = retrying([answer(429), answer(429), answer(429)], { random: () => random });
    assert.deepEqual(await requestTimes(run, 8000), expected);
  }
});

test("Retry-After in seconds is waited out even when the back-off is shorter", async () => {
  const run = retrying([answer(429, null, { "Retry-After": "5" })], { random: () => 0 });
  assert.deepEqual(await requestTimes(run, 8000), [0, 5000]);
});

test("Retry-After as an HTTP date is waited out", async () => {
  const run = retrying([
    (request) => answer(503, null, { "Retry-After": new Date(Date.parse("2026-12-01T09:00:03Z")).toUTCString() }),
  ]);
  assert.deepEqual(await requestTimes(run, 8000), [0, 3000]);
});

test("network errors are retried, and the event kept until it is accepted", async () => {
  const run = retrying([new TypeError("Failed to fetch"), new TypeError("Failed to fetch")], { random: () => 1 });
  assert.deepEqual(await requestTimes(run, 5000), [0, 1000, 3000]);
  assert.equal(run.client.queued, 0);
});

test("back online after a network error, the retry goes at once; not after a 503", async () => {
  const run = retrying([new TypeError("Failed to fetch")], { random: () => 1, maxRetryDelayMs: 60000 });
  await run.clock.advance(100);
  run.window.fire("online");
  await run.clock.advance(0);
  assert.deepEqual(
    run.fetch.requests.map((request) => request.at - run.fetch.requests[0].at),
    [0, 100],
  );
  const busy = retrying([answer(503)], { random: () => 1 });
  await busy.clock.advance(100);
  busy.window.fire("online");
  await busy.clock.advance(0);
  assert.equal(busy.fetch.requests.length, 1);
});

test("a 400 is never retried: the batch is dropped and reported", async () => {
  const run = retrying([answer(400)]);
  assert.deepEqual(await requestTimes(run, 100000), [0]);
  assert.equal(run.client.queued, 0);
  assert.deepEqual(run.errors, [{ status: 400, message: "HTTP 400: the batch is dropped", dropped: 1 }]);
});

test("a 401 stops sending and keeps the queue", async () => {
  const run = retrying([answer(401)]);
  run.client.sendEvent({ eventType: "b" });
  assert.deepEqual(await requestTimes(run, 100000), [0]);
  assert.equal(run.client.queued, 2);
  assert.equal(run.errors[0].status, 401);
});

test("a 207 resends only the entries that failed retryably, and drops those rejected as invalid", async () => {
  const fetch = fakeFetch([multiStatus([true, 400, 503, true, 429]), multiStatus([true, true])]);
  const { client, clock, errors } = harness({ fetch, batchSize: 5, random: () => 0 });
  const ids = [1, 2, 3, 4, 5].map((n) => client.sendEvent({ eventType: `e${n}` }));
  await clock.advance(0);
  assert.equal(client.queued, 2);
  assert.equal(errors[0].dropped, 1);
  await clock.advance(500);
  assert.deepEqual(fetch.requests[1].ids, [ids[2], ids[4]]);
  assert.equal(client.queued, 0);
  assert.equal(fetch.requests.length, 2);
});

test("a 207 that answers fewer entries than were sent resends the rest", async () => {
  const fetch = fakeFetch([multiStatus([true])]);
  const { client, clock } = harness({ fetch, batchSize: 2, random: () => 0 });
  const ids = [client.sendEvent({}), client.sendEvent({})];
  await clock.advance(600);
  assert.deepEqual(fetch.requests[1].ids, [ids[1]]);
});

test("retryAfterMs reads seconds and HTTP dates, and ignores what it cannot read", () => {
  const now = Date.parse("2026-12-01T09:00:00Z");
  assert.equal(retryAfterMs("7", now), 7000);
  assert.equal(retryAfterMs("Tue, 01 Dec 2026 09:00:30 GMT", now), 30000);
  assert.equal(retryAfterMs("Tue, 01 Dec 2026 08:00:00 GMT", now), 0);
  assert.equal(retryAfterMs("soon", now), null);
  assert.equal(retryAfterMs(null, now), null);
});
