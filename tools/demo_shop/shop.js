// The demo shop's use of the profilestream web SDK: every page inits it from /demo-config.json (written by
// `make demo` with the inlet's address), sends a page view, and wires the page's buttons to events.
import { init, sendEvent, setIdentity, setConsent } from "/sdk/profilestream.js";

const config = await (await fetch("/demo-config.json")).json();
init({ ...config, autoPageViews: true, autoClicks: true });
setConsent({ collect: "y" });

// A stand-in for the shop's account system: the CRM id an e-mail signs in as.
function crmIdOf(email) {
  let hash = 0;
  for (const character of email.trim().toLowerCase()) hash = (hash * 31 + character.charCodeAt(0)) >>> 0;
  return `CRM${hash}`;
}

for (const button of document.querySelectorAll("[data-add-to-cart]")) {
  button.addEventListener("click", () => {
    sendEvent({
      eventType: "commerce.productListAdds",
      commerce: { productListAdds: { value: 1 } },
      productListItems: [{ SKU: button.dataset.addToCart, name: button.dataset.name, quantity: 1 }],
    });
    document.querySelector("#cart-count").textContent = String(Number(document.querySelector("#cart-count").textContent) + 1);
  });
}

const signIn = document.querySelector("#sign-in");
if (signIn) {
  signIn.addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    const email = document.querySelector("#email").value;
    setIdentity("Email", email, "authenticated");
    setIdentity("CRMID", crmIdOf(email), "authenticated");
    sendEvent({ eventType: "web.formFilledOut", web: { webPageDetails: { name: "sign-in" } } });
    document.querySelector("#signed-in").textContent = `Signed in as ${email}`;
  });
}
