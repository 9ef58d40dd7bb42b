// The profilestream console (index.html lists the DOM ids; README, "Console").
// Every figure comes from this server's API with the token pasted into #token, kept in this tab's sessionStorage.
// Nothing is written with innerHTML: identities and attributes are personal data from anyone's messages.
"use strict";

(function () {
  const TOKEN_KEY = "profilestream.console.token";
  const PERSON_ID = /^p-[0-9a-f]{24}$/;
  const POLL_MS = 2000;
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  // Set when the server refused the token (401, 403, 429): polling stops until the token changes, since each refusal
  // counts against this address and the server shuts it out past a few (429).
  let refused = false;

  // A GET with the bearer token: {status, body} (body null when not JSON).
  async function get(path) {
    const response = await fetch(path, {
      headers: { Authorization: "Bearer " + token(), Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
    if ([401, 403, 429].includes(response.status)) refused = true;
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    return { status: response.status, body: body };
  }

  function why(status) {
    if (status === 401) return "paste the API token first";
    if (status === 403) return "that is not this API's token";
    if (status === 404) return "not found";
    if (status === 422) return "not an identity (NAMESPACE:ID) or person id ingestion keeps";
    if (status === 429) return "too many failed tokens from here: wait a minute";
    if (status === 503) return "the store cannot be reached";
    return "the server answered " + status;
  }

  function el(tag, text, attributes) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    return node;
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function replaceChildren(parent, children) {
    parent.replaceChildren(...children);
  }

  const identityText = (identity) => identity.namespace + ":" + identity.id;

  // --- lookup -------------------------------------------------------------------------------------------------

  let lookupInFlight = false;

  async function lookUp() {
    const asked = $("lookup").value.trim();
    if (!asked || lookupInFlight) return;
    refused = false;
    lookupInFlight = true;
    try {
      const path = PERSON_ID.test(asked)
        ? "/profiles/" + encodeURIComponent(asked)
        : "/profiles?identity=" + encodeURIComponent(asked);
      const profile = await get(path);
      if (profile.status !== 200) {
        showStatus(why(profile.status));
        clearPerson();
        return;
      }
      showStatus("");
      showProfile(profile.body);
      // The graph is asked for by identity: the one looked up, or the person's first.
      let graphIdentity = asked;
      if (PERSON_ID.test(asked)) {
        graphIdentity = profile.body.identities.length ? identityText(profile.body.identities[0]) : null;
      }
      if (graphIdentity === null) {
        drawGraph(null, null);
        return;
      }
      const graph = await get("/identities/" + encodeURIComponent(graphIdentity));
      if (graph.status === 200) {
        drawGraph(graph.body, graph.body.identity);
      } else {
        drawGraph(null, null);
        showStatus("identity graph: " + why(graph.status));
      }
    } catch (error) {
      showStatus("the server cannot be reached");
    } finally {
      lookupInFlight = false;
    }
  }

  function showStatus(text) {
    $("status").textContent = text;
  }

  function clearPerson() {
    $("person").textContent = "";
    replaceChildren($("identities"), []);
    $("attributes").textContent = "";
    replaceChildren($("events"), []);
    drawGraph(null, null);
  }

  function showProfile(profile) {
    $("person").textContent = profile.person_id;
    replaceChildren($("identities"), profile.identities.map((identity) => el("li", identityText(identity))));
    $("attributes").textContent = JSON.stringify(profile.attributes, null, 2);
    const events = (profile.events && profile.events.recent) || [];
    replaceChildren(
      $("events"),
      events.map((event) => {
        const text = [event.timestamp, event.eventType, event._id].filter((part) => part !== undefined).join("  ");
        return el("li", text, { "data-event-id": event._id === undefined ? "" : String(event._id) });
      }),
    );
  }

  // --- identity graph -----------------------------------------------------------------------------------------

  const WIDTH = 640;
  const HEIGHT = 420;

  // Identities on a circle, in a stable order (the person's first, as the store sorts them, then the others').
  function layout(names) {
    const centre = { x: WIDTH / 2, y: HEIGHT / 2 };
    if (names.length === 1) return new Map([[names[0], centre]]);
    const radius = Math.min(WIDTH, HEIGHT) / 2 - 70;
    return new Map(
      names.map((name, index) => {
        const angle = -Math.PI / 2 + (2 * Math.PI * index) / names.length;
        return [name, { x: centre.x + radius * Math.cos(angle), y: centre.y + radius * Math.sin(angle) }];
      }),
    );
  }

  function drawGraph(answer, asked) {
    const graph = $("graph");
    if (answer === null) {
      replaceChildren(graph, []);
      return;
    }
    const members = answer.identities.map(identityText);
    const memberSet = new Set(members);
    const others = [];
    for (const link of answer.links) {
      for (const end of [link.a, link.b]) {
        if (!memberSet.has(end) && !others.includes(end)) others.push(end);
      }
    }
    const quarantined = new Set(answer.quarantined);
    const at = layout(members.concat(others));
    const linkLayer = svg("g", { class: "links" });
    const nodeLayer = svg("g", { class: "nodes" });
    for (const link of answer.links) {
      const a = at.get(link.a);
      const b = at.get(link.b);
      const classes = "link" + (link.removed_by ? " removed" : "");
      const line = svg("line", { class: classes, x1: a.x, y1: a.y, x2: b.x, y2: b.y, "data-a": link.a, "data-b": link.b });
      const tip =
        link.a + " \u2014 " + link.b +
        "\nfirst seen " + link.first_seen + " (message " + link.first_message + ")" +
        "\nlast seen " + link.last_seen + " (message " + link.last_message + ")" +
        (link.removed_by ? "\nremoved by rule " + link.removed_by : "");
      line.appendChild(svg("title", {}, tip));
      if (link.removed_by) line.setAttribute("data-removed-by", link.removed_by);
      linkLayer.appendChild(line);
      // A wider transparent line over it, so the tooltip is easy to hover.
      const hit = svg("line", { class: "link-hit", x1: a.x, y1: a.y, x2: b.x, y2: b.y });
      hit.appendChild(svg("title", {}, tip));
      linkLayer.appendChild(hit);
      if (link.removed_by) {
        linkLayer.appendChild(
          svg("text", { class: "rule", x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 4, "text-anchor": "middle" }, link.removed_by),
        );
      }
    }
    for (const name of members.concat(others)) {
      const point = at.get(name);
      const classes = ["node"];
      if (quarantined.has(name)) classes.push("quarantined");
      if (!memberSet.has(name)) classes.push("other-person");
      if (name === asked) classes.push("asked");
      const circle = svg("circle", { class: classes.join(" "), cx: point.x, cy: point.y, r: 10, "data-identity": name });
      const notes = [name];
      if (quarantined.has(name)) notes.push("quarantined");
      if (!memberSet.has(name)) notes.push("another person's identity");
      circle.appendChild(svg("title", {}, notes.join("\n")));
      nodeLayer.appendChild(circle);
      const below = point.y >= HEIGHT / 2;
      nodeLayer.appendChild(
        svg("text", { class: "label", x: point.x, y: point.y + (below ? 24 : -16), "text-anchor": "middle" }, shortened(name)),
      );
    }
    replaceChildren(graph, [linkLayer, nodeLayer]);
  }

  function shortened(name) {
    return name.length > 40 ? name.slice(0, 24) + "\u2026" + name.slice(-12) : name;
  }

  // --- pipeline -----------------------------------------------------------------------------------------------

  async function pollPipeline() {
    if (!token()) {
      $("pipeline-status").textContent = "paste the API token to see the pipeline";
      return;
    }
    let answer;
    try {
      answer = await get("/pipeline/metrics");
    } catch (error) {
      $("pipeline-status").textContent = "the server cannot be reached";
      return;
    }
    if (answer.status !== 200) {
      $("pipeline-status").textContent = why(answer.status);
      return;
    }
    showPipeline(answer.body);
  }

  function milliseconds(value) {
    if (value === null || value === undefined) return "–";
    return value === -1 ? "> 300000 ms" : "\u2264 " + value + " ms";
  }

  function showPipeline(figures) {
    if (!figures.available) {
      $("pipeline-status").textContent = figures.detail;
      return;
    }
    const state = figures.running ? "running" : "ended";
    $("pipeline-status").textContent =
      "run " + state + "; counters read at " + figures.at + " (" + Math.round(figures.age_s) + " s ago)";
    $("messages-per-s").textContent = figures.messages_per_s === null ? "–" : String(figures.messages_per_s);
    $("messages").textContent = String(figures.messages);
    $("failed").textContent = String(figures.failed);
    $("freshness-p50").textContent = milliseconds(figures.profile_freshness_ms.p50);
    $("freshness-p99").textContent = milliseconds(figures.profile_freshness_ms.p99);
    replaceChildren(
      $("failed-by-code"),
      Object.entries(figures.failed_by_code).map(([code, count]) => el("li", code + ": " + count, { "data-code": code })),
    );
  }

  // --- start --------------------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
    // On change (a paste, Enter, leaving the field), not on each key: a half-typed token is a failed authentication,
    // and the server refuses an address past a few of those (429).
    $("token").addEventListener("change", () => {
      sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
      refused = false;
      pollPipeline();
    });
    $("lookup-form").addEventListener("submit", (event) => {
      event.preventDefault();
      lookUp();
    });
    setInterval(() => {
      if ($("follow").checked && !refused) lookUp();
    }, POLL_MS);
    pollPipeline();
    setInterval(() => {
      if (!refused) pollPipeline();
    }, POLL_MS);
  });
})();
