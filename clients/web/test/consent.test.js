import assert from "node:assert/strict";
import { test } from "node:test";

import { harness, MemoryStorage, settle } from "./fakes.js";

test("while consent is pending nothing is sent or stored; events wait, bounded, and go at y", async () => {
  const storage = new MemoryStorage();
  const { client, fetch, clock, document, errors } = harness({ storage, defaultConsent: "pending", maxQueue: 3 });
  client.setIdentity("CRMID", "c-1");
  for (let n = 0; n < 5; n++) client.sendEvent({ eventType: `e${n}` });
  await clock.advance(60000);
  assert.equal(fetch.requests.length, 0);
  assert.deepEqual([...storage.items.keys()], []);
  assert.equal(document.cookie, "");
  assert.equal(client.queued, 3);
  assert.equal(
    errors.reduce((sum, error) => sum + error.dropped, 0),
    2,
  );

  client.setConsent({ collect: "y" });
  await client.flush();
  assert.deepEqual(
    fetch.requests[0].messages.map((message) => message.body.xdmEntity.eventType),
    ["e2", "e3", "e4"],
  );
  await settle();
  assert.equal(storage.getItem("profilestream.consent"), "y");
  assert.equal(storage.getItem("profilestream_ecid"), client.ecid);
  assert.match(document.cookie, new RegExp(`profilestream_ecid=${client.ecid}`));
});

test("consent n drops waiting events, clears what is stored and sends nothing more", async () => {
  const storage = new MemoryStorage();
  const { client, fetch, clock, document } = harness({ storage, batchSize: 100 });
  client.setIdentity("CRMID", "c-1");
  client.sendEvent({ eventType: "a" });
  await settle();
  assert.ok(storage.getItem("profilestream.queue.web").length > 2);

  client.setConsent({ collect: "n" });
  assert.equal(client.queued, 0);
  assert.equal(client.sendEvent({ eventType: "b" }), null);
  await clock.advance(60000);
  await client.flush();
  assert.equal(fetch.requests.length, 0);
  assert.deepEqual([...storage.items.entries()], [["profilestream.consent", "n"]]);
  assert.equal(document.cookie, "");
});

test("a consent choice outlives the page: the next client starts with it, whatever its default", async () => {
  const storage = new MemoryStorage();
  harness({ storage }).client.setConsent({ collect: "n" });
  const next = harness({ storage, defaultConsent: "y" });
  next.client.sendEvent({ eventType: "a" });
  await next.client.flush();
  assert.equal(next.fetch.requests.length, 0);
  assert.equal(next.client.queued, 0);
});

test("going back to pending holds new events without sending them", async () => {
  const { client, fetch, clock } = harness({ batchSize: 1 });
  client.setConsent({ collect: "pending" });
  client.sendEvent({ eventType: "a" });
  await clock.advance(60000);
  assert.equal(fetch.requests.length, 0);
  client.setConsent({ collect: "y" });
  await clock.advance(0);
  assert.equal(fetch.requests.length, 1);
});

test("setConsent refuses anything but y, n and pending", () => {
  const { client } = harness();
  assert.throws(() => client.setConsent({ collect: "yes" }), TypeError);
  assert.throws(() => client.setConsent(), TypeError);
});
