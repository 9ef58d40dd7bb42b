// Prints a batch body the SDK makes, with real crypto and clock: a page view, a link click and a signed-in event.
// tests/clients/test_web_sdk.py judges it with the inlet's own decoding and validation.

import { createClient } from "../src/profilestream.js";
import { fakeDocument } from "../test/fakes.js";

let body = null;
const fetch = async (url, init) => {
  body = init.body;
  return { status: 207, headers: { get: () => null }, json: async () => ({ responses: [] }) };
};
const document = fakeDocument("https://shop.test/shoes?size=9", "Shoes");
document.referrer = "https://search.test/?q=shoes";
const client = createClient({
  endpoint: "",
  connectionId: "web",
  datasetId: "experience_events",
  autoPageViews: true,
  autoClicks: true,
  batchSize: 100,
  fetch,
  document,
  window: null,
  navigator: null,
  storage: null,
});
const href = "https://elsewhere.test/sale";
document.fire("click", { target: { closest: () => ({ href, textContent: " Sale " }) } });
client.setIdentity("CRMID", "c-1234");
client.setIdentity("Email", "Jane@Example.com", "ambiguous");
client.sendEvent({ eventType: "commerce.productViews", commerce: { productViews: { value: 1 } } });
await client.flush();
client.close();
process.stdout.write(body);
