// Sends events to a real inlet with Node's fetch: node scripts/send.js ENDPOINT CONNECTION_ID.
// Two valid events and one the inlet's validation rejects; prints {queued, errors} once the inlet has answered.
// tests/clients/test_web_sdk.py runs it against the inlet, to check that the SDK reads the inlet's 207 as it is.

import { createClient } from "../src/profilestream.js";

const [endpoint, connectionId] = process.argv.slice(2);
const errors = [];
const client = createClient({
  endpoint,
  connectionId,
  syncValidation: true,
  batchSize: 100,
  onError: (report) => errors.push(report),
  document: null,
  window: null,
  navigator: null,
  storage: null,
});
client.sendEvent({ eventType: "web.webpagedetails.pageViews", web: { webPageDetails: { name: "home" } } });
client.sendEvent({ eventType: "web.webpagedetails.pageViews", timestamp: "yesterday" });
client.setIdentity("CRMID", "c-1");
client.sendEvent({ eventType: "commerce.productViews", commerce: { productViews: { value: 1 } } });
await client.flush();
client.close();
process.stdout.write(JSON.stringify({ queued: client.queued, errors }));
