import assert from "node:assert/strict";
import { test } from "node:test";
import { gunzipSync } from "node:zlib";

import { answer, BATCH_URL, harness, multiStatus } from "./fakes.js";

test("a batch goes once batchSize events wait", async () => {
  const { client, fetch, clock } = harness({ batchSize: 3, flushIntervalMs: 5000 });
  client.sendEvent({ eventType: "a" });
  client.sendEvent({ eventType: "b" });
  await clock.advance(0);
  assert.equal(fetch.requests.length, 0);
  client.sendEvent({ eventType: "c" });
  await clock.advance(0);
  assert.equal(fetch.requests.length, 1);
  assert.equal(fetch.requests[0].url, BATCH_URL);
  assert.equal(fetch.requests[0].messages.length, 3);
  assert.equal(client.queued, 0);
});

test("fewer than batchSize events go flushIntervalMs after the first", async () => {
  const { client, fetch, clock } = harness({ batchSize: 10, flushIntervalMs: 2000 });
  client.sendEvent({ eventType: "a" });
  await clock.advance(1000);
  client.sendEvent({ eventType: "b" });
  await clock.advance(999);
  assert.equal(fetch.requests.length, 0);
  await clock.advance(1);
  assert.deepEqual(
    fetch.requests.map((request) => request.messages.length),
    [2],
  );
});

test("batchSize is capped at the inlet's 1,024 messages", async () => {
  const { client, fetch } = harness({ batchSize: 5000, maxQueue: 3000 });
  for (let n = 0; n < 2100; n++) client.sendEvent({ eventType: "a" });
  await client.flush();
  assert.deepEqual(
    fetch.requests.map((request) => request.messages.length),
    [1024, 1024, 52],
  );
});

test("a batch that would pass 1 MiB is split, each request under it", async () => {
  const { client, fetch } = harness({ batchSize: 100 });
  const filler = "x".repeat(100 * 1024);
  for (let n = 0; n < 25; n++) client.sendEvent({ eventType: "a", _tenant: { filler } });
  await client.flush();
  const sizes = fetch.requests.map((request) => Buffer.byteLength(request.init.body));
  assert.ok(fetch.requests.length >= 3, `${fetch.requests.length} requests`);
  for (const size of sizes) assert.ok(size <= 1048576, `${size} bytes`);
  assert.equal(
    fetch.requests.reduce((sum, request) => sum + request.messages.length, 0),
    25,
  );
  assert.ok(sizes[0] > 900 * 1024, "a split batch is filled up to the limit");
});

test("multi-byte characters count as their UTF-8 bytes", async () => {
  const { client, fetch } = harness({ batchSize: 100, maxBatchBytes: 10000 });
  for (let n = 0; n < 4; n++) client.sendEvent({ eventType: "a", _tenant: { text: "é".repeat(1500) } });
  await client.flush();
  for (const request of fetch.requests) assert.ok(Buffer.byteLength(request.init.body) <= 10000);
  assert.equal(fetch.requests.length, 2);
});

test("an event larger than a whole batch is dropped and reported", async () => {
  const { client, fetch, errors } = harness({ maxBatchBytes: 2000 });
  client.sendEvent({ eventType: "a", _tenant: { filler: "x".repeat(3000) } });
  await client.flush();
  assert.equal(client.queued, 0);
  assert.equal(fetch.requests.length, 0);
  assert.equal(errors[0].dropped, 1);
});

test("a 413 halves the batch until the inlet takes it", async () => {
  const sizes = [];
  const limited = async (url, init) => {
    const messages = JSON.parse(init.body).messages;
    sizes.push(messages.length);
    return messages.length > 2 ? answer(413) : multiStatus(messages.map(() => true));
  };
  const { client } = harness({ batchSize: 8, fetch: limited });
  for (let n = 0; n < 8; n++) client.sendEvent({ eventType: "a" });
  await client.flush();
  assert.deepEqual(sizes, [8, 4, 2, 2, 2, 2]);
  assert.equal(client.queued, 0);
});

test("a plain batch is text/plain JSON, a simple CORS request; a token adds the Authorization header", async () => {
  const { client, fetch } = harness({ batchSize: 1 });
  client.sendEvent({});
  await client.flush();
  assert.deepEqual(fetch.requests[0].init.headers, { "Content-Type": "text/plain;charset=UTF-8" });
  assert.equal(fetch.requests[0].init.credentials, "omit");
  const withToken = harness({ batchSize: 1, token: "t0ken" });
  withToken.client.sendEvent({});
  await withToken.client.flush();
  assert.equal(withToken.fetch.requests[0].init.headers.Authorization, "Bearer t0ken");
});

test("with gzip a batch is sent compressed, with Content-Encoding: gzip", async () => {
  const bodies = [];
  const fetch = async (url, init) => {
    bodies.push({ headers: init.headers, json: JSON.parse(gunzipSync(Buffer.from(init.body)).toString()) });
    return multiStatus([true]);
  };
  const { client } = harness({ fetch, gzip: true, batchSize: 1 });
  const id = client.sendEvent({ eventType: "a" });
  await client.flush();
  assert.equal(bodies[0].headers["Content-Encoding"], "gzip");
  assert.equal(bodies[0].json.messages[0].body.xdmEntity._id, id);
  assert.equal(client.queued, 0);
});
