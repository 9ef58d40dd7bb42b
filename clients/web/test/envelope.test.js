import assert from "node:assert/strict";
import { test } from "node:test";

import * as sdk from "../src/profilestream.js";
import { fakeDocument, FakeTarget, harness, MemoryStorage, settle } from "./fakes.js";

const EVENT_SCHEMA_REF = {
  id: "https://ns.adobe.com/xdm/context/experienceevent",
  contentType: "application/vnd.adobe.xed-full+json;version=1",
};

async function sent(run) {
  await run.client.flush();
  return run.fetch.requests.flatMap((request) => request.messages);
}

test("an event is a streaming envelope with _id, timestamp and the device's ECID", async () => {
  const run = harness({ datasetId: "experience_events" });
  const id = run.client.sendEvent({ eventType: "commerce.productViews", commerce: { productViews: { value: 1 } } });
  const [message] = await sent(run);
  assert.deepEqual(message.header, { schemaRef: EVENT_SCHEMA_REF, datasetId: "experience_events" });
  assert.deepEqual(message.body.xdmMeta, { schemaRef: EVENT_SCHEMA_REF });
  const entity = message.body.xdmEntity;
  assert.equal(entity._id, id);
  assert.match(entity._id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(entity.timestamp, "2026-12-01T09:00:00.000Z");
  assert.deepEqual(entity.identityMap, {
    ECID: [{ id: run.client.ecid, authenticatedState: "ambiguous", primary: true }],
  });
  assert.match(run.client.ecid, /^\d{38}$/);
  assert.deepEqual(entity.commerce, { productViews: { value: 1 } });
});

test("without a datasetId the header names only the schema, which may be an id or {id, contentType}", async () => {
  const run = harness({ schemaRef: "https://ns.example.com/custom" });
  run.client.sendEvent({});
  const [message] = await sent(run);
  assert.deepEqual(Object.keys(message.header), ["schemaRef"]);
  assert.equal(message.header.schemaRef.id, "https://ns.example.com/custom");
});

test("the ECID is made once: from the cookie, else from storage, else new", async () => {
  const document = fakeDocument();
  const first = harness({ document, storage: new MemoryStorage() });
  const ecid = first.client.ecid;
  await settle();
  const fromCookie = harness({ document, storage: new MemoryStorage() });
  assert.equal(fromCookie.client.ecid, ecid);
  const storage = new MemoryStorage();
  storage.setItem("profilestream_ecid", "1".repeat(38));
  assert.equal(harness({ storage }).client.ecid, "1".repeat(38));
  storage.setItem("profilestream_ecid", "not an ecid");
  assert.match(harness({ storage }).client.ecid, /^\d{38}$/);
});

test("real crypto makes a random UUID _id and a 38-digit ECID", () => {
  const run = harness({ randomUUID: undefined });
  assert.match(run.client.ecid, /^\d{38}$/);
  assert.notEqual(harness({ randomUUID: undefined, document: fakeDocument() }).client.ecid, run.client.ecid);
});

test("setIdentity adds sign-in identities to later events; null or clearIdentity removes them", async () => {
  const run = harness({ batchSize: 100 });
  run.client.setIdentity("CRMID", "c-1");
  run.client.setIdentity("Email", "jane@example.com", "ambiguous");
  run.client.sendEvent({ eventType: "signed-in" });
  run.client.setIdentity("Email", null);
  run.client.sendEvent({ eventType: "one" });
  run.client.clearIdentity();
  run.client.sendEvent({ eventType: "signed-out" });
  const maps = (await sent(run)).map((message) => message.body.xdmEntity.identityMap);
  assert.deepEqual(maps[0].CRMID, [{ id: "c-1", authenticatedState: "authenticated" }]);
  assert.deepEqual(maps[0].Email, [{ id: "jane@example.com", authenticatedState: "ambiguous" }]);
  assert.deepEqual(Object.keys(maps[1]), ["ECID", "CRMID"]);
  assert.deepEqual(Object.keys(maps[2]), ["ECID"]);
  assert.throws(() => run.client.setIdentity("CRMID", "c-1", "signedIn"), TypeError);
  assert.throws(() => run.client.setIdentity("ECID", "1"), TypeError);
});

test("identities set survive a reload", async () => {
  const storage = new MemoryStorage();
  harness({ storage }).client.setIdentity("CRMID", "c-1");
  await settle();
  const second = harness({ storage });
  second.client.sendEvent({});
  const [message] = await sent(second);
  assert.deepEqual(message.body.xdmEntity.identityMap.CRMID, [{ id: "c-1", authenticatedState: "authenticated" }]);
});

test("stored identities that are not well-formed are ignored; an event must be an object", () => {
  const storage = new MemoryStorage();
  storage.setItem(
    "profilestream.identities",
    JSON.stringify({ CRMID: { id: 7 }, Email: "x", Phone: { id: "1", authenticatedState: "ambiguous" } }),
  );
  const { client } = harness({ storage });
  assert.deepEqual(Object.keys(client._identityMap()), ["ECID", "Phone"]);
  storage.setItem("profilestream.identities", "[1, 2");
  assert.deepEqual(Object.keys(harness({ storage }).client._identityMap()), ["ECID"]);
  assert.throws(() => client.sendEvent("page view"), TypeError);
  assert.throws(() => client.sendEvent(null), TypeError);
});

test("an identityMap the event brings is kept; its primary identity wins over the ECID", async () => {
  const run = harness();
  run.client.sendEvent({ identityMap: { Email: [{ id: "a@example.com", primary: true }] } });
  const [message] = await sent(run);
  const map = message.body.xdmEntity.identityMap;
  assert.deepEqual(map.Email, [{ id: "a@example.com", primary: true }]);
  assert.equal(map.ECID[0].primary, false);
});

test("autoPageViews sends a page view with the page's name and URL at init", async () => {
  const document = fakeDocument("https://shop.test/shoes?size=9", "Shoes");
  document.referrer = "https://search.test/?q=shoes";
  const run = harness({ document, autoPageViews: true });
  const [message] = await sent(run);
  assert.equal(message.body.xdmEntity.eventType, "web.webpagedetails.pageViews");
  assert.deepEqual(message.body.xdmEntity.web, {
    webPageDetails: { pageViews: { value: 1 }, URL: "https://shop.test/shoes?size=9", name: "Shoes" },
    webReferrer: { URL: "https://search.test/?q=shoes" },
  });
});

test("autoClicks sends a link click for a click inside a link, exit when it leaves the site", async () => {
  const run = harness({ autoClicks: true, batchSize: 100 });
  const link = (href, textContent) => ({ href, textContent, closest: () => ({ href, textContent }) });
  run.document.fire("click", { target: link("https://shop.test/cart", "  Your\n cart ") });
  run.document.fire("click", { target: link("https://elsewhere.test/", "") });
  run.document.fire("click", { target: { closest: () => null } });
  const svgLink = { href: { baseVal: "/sale" }, getAttribute: () => "/sale", textContent: "Sale" };
  run.document.fire("click", { target: { closest: () => svgLink } });
  const interactions = (await sent(run)).map((message) => message.body.xdmEntity);
  assert.deepEqual(
    interactions.map((entity) => entity.eventType),
    ["web.webinteraction.linkClicks", "web.webinteraction.linkClicks", "web.webinteraction.linkClicks"],
  );
  assert.deepEqual(interactions[2].web.webInteraction, {
    type: "other",
    URL: "https://shop.test/sale",
    linkClicks: { value: 1 },
    name: "Sale",
  });
  assert.deepEqual(interactions[0].web.webInteraction, {
    type: "other",
    URL: "https://shop.test/cart",
    linkClicks: { value: 1 },
    name: "Your cart",
  });
  assert.equal(interactions[1].web.webInteraction.type, "exit");
});

test("close removes the listeners it added", () => {
  const window = new FakeTarget();
  const run = harness({ window, autoClicks: true });
  run.client.close();
  assert.deepEqual(
    [...window.listeners.values(), ...run.document.listeners.values()].map((listeners) => listeners.length),
    [0, 0, 0, 0],
  );
});

test("the module-level API acts on the client init made", async () => {
  assert.throws(() => sdk.sendEvent({}), /call init/);
  const requests = [];
  const storage = new MemoryStorage();
  const fetch = async (url, init) => {
    requests.push(JSON.parse(init.body));
    return { status: 200, headers: { get: () => null }, json: async () => ({}) };
  };
  const common = { endpoint: "", connectionId: "web", fetch, storage, document: fakeDocument(), window: null };
  sdk.init({ ...common, navigator: null });
  sdk.setIdentity("CRMID", "c-9");
  sdk.sendEvent({ eventType: "a" });
  await sdk.flush();
  sdk.close();
  assert.equal(requests[0].messages[0].body.xdmEntity.identityMap.CRMID[0].id, "c-9");
});

test("init needs an endpoint and a connection id", () => {
  assert.throws(() => sdk.createClient({ connectionId: "web" }), TypeError);
  assert.throws(() => sdk.createClient({ endpoint: "https://inlet.test" }), TypeError);
});
