// The fnhost console: plain JavaScript over the worker's REST API, with the token the CLI uses.
// Pages: the functions of a namespace, one function, the namespace's topics and the cluster.
// Nothing here is inline in the page, so the worker's Content-Security-Policy allows only this file.

const POLL_MS = 2000;
/** Samples kept for a sparkline: five minutes at one every POLL_MS. */
const SAMPLES = 150;
/** Log lines the live log keeps on the page. */
const LOG_LINES = 500;

const session = {
  read(name) {
    return sessionStorage.getItem(`fnhost.${name}`);
  },
  write(name, value) {
    sessionStorage.setItem(`fnhost.${name}`, value);
  },
  get token() {
    return this.read("token") ?? "";
  },
  get who() {
    const who = this.read("who");
    return who ? JSON.parse(who) : null;
  },
  get tenant() {
    return this.read("tenant") ?? this.who?.tenant ?? "public";
  },
  get namespace() {
    return this.read("namespace") ?? "default";
  },
  clear() {
    for (const name of ["token", "who", "tenant", "namespace"]) sessionStorage.removeItem(`fnhost.${name}`);
  },
};

/** What the page shown started (timers, followed logs), stopped when another page is shown. */
let shown = { stopped: false, controller: new AbortController() };
/** Each function's recent counts, for its rates and sparkline, by tenant/namespace/name. */
const history = new Map();

class ApiError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

const $ = (id) => document.getElementById(id);
const segment = (text) => encodeURIComponent(text);

/** An element with attributes (`on…` ones are listeners) and children (strings become text). */
function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return element;
}

function say(text, bad = false) {
  const status = $("status");
  status.textContent = text;
  status.className = bad ? "error" : "";
}

function headers(extra = {}) {
  // The header marks the request as a program's: a worker without tokens takes writes only with it.
  const all = { "x-fnhost-client": "fnhost-console", ...extra };
  if (session.token) all.Authorization = `Bearer ${session.token}`;
  return all;
}

/** Calls the API; answers its JSON, or throws its reason. */
async function api(method, path, { json, form, token } = {}) {
  const init = { method, headers: headers(), cache: "no-store", signal: shown.controller.signal };
  if (token !== undefined) {
    if (token) init.headers.Authorization = `Bearer ${token}`;
    else delete init.headers.Authorization;
  }
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  if (form !== undefined) init.body = form;
  const response = await fetch(path, init);
  const text = await response.text();
  let value = text;
  try {
    value = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: kept as text.
  }
  if (!response.ok) throw new ApiError(response.status, value?.reason ?? `HTTP ${response.status}: ${text}`);
  return value;
}

/** Runs `poll` now and every POLL_MS while its page is shown; a failure is shown, not thrown. */
function every(poll) {
  const mine = shown;
  const run = async () => {
    if (mine.stopped) return;
    try {
      await poll();
    } catch (error) {
      if (!mine.stopped) say(error.message, true);
    }
    if (!mine.stopped) setTimeout(run, POLL_MS);
  };
  run();
}

function functionsPath(tenant, namespace) {
  return `/admin/v3/functions/${segment(tenant)}/${segment(namespace)}`;
}

function functionPath(name) {
  return `${functionsPath(session.tenant, session.namespace)}/${segment(name)}`;
}

/** Notes a function's counts now; returns its rates in and out per second and its recent in-rates. */
function sample(key, totals) {
  const samples = history.get(key) ?? [];
  samples.push({ time: performance.now(), received: totals.receivedTotal, processed: totals.processedSuccessfullyTotal });
  if (samples.length > SAMPLES + 1) samples.shift();
  history.set(key, samples);
  const rates = [];
  for (let i = 1; i < samples.length; i++) {
    const seconds = (samples[i].time - samples[i - 1].time) / 1000;
    rates.push({
      in: Math.max(0, samples[i].received - samples[i - 1].received) / seconds,
      out: Math.max(0, samples[i].processed - samples[i - 1].processed) / seconds,
    });
  }
  const latest = rates.at(-1) ?? { in: 0, out: 0 };
  return { in: latest.in, out: latest.out, recent: rates.map((rate) => rate.in) };
}

/** A sparkline of `values`, labelled for screen readers. */
function sparkline(values, label, large = false) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", large ? "spark large" : "spark");
  svg.setAttribute("viewBox", "0 0 100 20");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const highest = Math.max(1, ...values);
  const step = values.length > 1 ? 100 / (values.length - 1) : 100;
  const points = values.map((value, i) => `${(i * step).toFixed(2)},${(19 - (value / highest) * 18).toFixed(2)}`);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" ") || "0,19 100,19");
  svg.append(line);
  return svg;
}

const number = (value, digits = 0) =>
  Number(value ?? 0).toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });

function bytes(count) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(count ?? 0);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${number(value, unit ? 1 : 0)} ${units[unit]}`;
}

function table(caption, columns, rows) {
  return el(
    "table",
    {},
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, columns.map(([name, numeric]) => el("th", { scope: "col", class: numeric ? "number" : null }, name)))),
    el("tbody", {}, rows),
  );
}

// --- Signing in and the page frame --------------------------------------------------------------

function showSignIn() {
  $("nav").hidden = true;
  $("scope").hidden = true;
  const token = el("input", { id: "token", type: "password", autocomplete: "off", spellcheck: "false" });
  const form = el(
    "form",
    { class: "row", id: "sign-in" },
    el("label", { for: "token" }, "Token"),
    token,
    el("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const who = await api("GET", "/admin/v2/whoami", { token: token.value.trim() });
      session.write("token", token.value.trim());
      session.write("who", JSON.stringify(who));
      if (who.tenant) session.write("tenant", who.tenant);
      say(who.tenant ? `Signed in as tenant ${who.tenant}.` : "Signed in as the operator.");
      route();
    } catch (error) {
      say(`Cannot sign in: ${error.message}`, true);
    }
  });
  $("main").replaceChildren(
    el("h1", {}, "fnhost console"),
    el("p", {}, "Sign in with the token the CLI uses (FNHOST_TOKEN). On a worker without tokens, leave it empty."),
    form,
  );
  token.focus();
}

function showFrame() {
  const who = session.who;
  $("nav").hidden = false;
  $("scope").hidden = false;
  $("nav-cluster").hidden = !(who.operator && who.cluster);
  const tenant = $("scope-tenant");
  tenant.value = session.tenant;
  tenant.readOnly = Boolean(who.tenant);
  $("scope-namespace").value = session.namespace;
}

function route() {
  shown.stopped = true;
  shown.controller.abort();
  shown = { stopped: false, controller: new AbortController() };
  if (!session.who) return showSignIn();
  showFrame();
  const [, page, ...rest] = (location.hash || "#/functions").split("/");
  const main = $("main");
  main.replaceChildren();
  if (page === "function" && rest.length) functionPage(decodeURIComponent(rest.join("/")));
  else if (page === "topics") topicsPage();
  else if (page === "cluster") clusterPage();
  else functionsPage();
}

// --- The functions of a namespace ---------------------------------------------------------------

function functionsPage() {
  const { tenant, namespace } = session;
  const columns = [
    ["Function"], ["Status"], ["In /s", true], ["Out /s", true], ["p50 ms", true], ["p99 ms", true],
    ["Exceptions", true], ["In /s, last minutes"],
  ];
  const list = table(`Functions of ${tenant}/${namespace}`, columns, []);
  const body = list.querySelector("tbody");
  $("main").append(el("h1", {}, `Functions in ${tenant}/${namespace}`), list);
  every(async () => {
    const names = await api("GET", functionsPath(tenant, namespace));
    const rows = await Promise.all(
      names.map(async (name) => {
        const base = `${functionsPath(tenant, namespace)}/${segment(name)}`;
        const [status, stats] = await Promise.all([api("GET", `${base}/status`), api("GET", `${base}/stats`)]);
        // Pulsar's FunctionStats has the totals at the top level, beside `instances`.
    const totals = stats;
        const rates = sample(`${tenant}/${namespace}/${name}`, totals);
        const running = status.numRunning === status.numInstances;
        const exceptions = totals.userExceptionsTotal + totals.systemExceptionsTotal;
        return el(
          "tr",
          { "data-function": name },
          el("td", {}, el("a", { href: `#/function/${segment(name)}` }, name)),
          el("td", { class: running ? "running" : "stopped" }, `${status.numRunning} of ${status.numInstances} running`),
          el("td", { class: "number" }, number(rates.in, 1)),
          el("td", { class: "number" }, number(rates.out, 1)),
          el("td", { class: "number" }, number(totals.processLatencyQuantiles?.p50, 2)),
          el("td", { class: "number" }, number(totals.processLatencyQuantiles?.p99, 2)),
          el("td", { class: "number" }, number(exceptions)),
          el("td", {}, sparkline(rates.recent, `messages in per second for ${name}, last minutes`)),
        );
      }),
    );
    body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 8 }, "No functions here yet."))]));
  });
}

// --- One function -------------------------------------------------------------------------------

function functionPage(name) {
  const base = functionPath(name);
  const counts = el("dl", { class: "counts", id: "counts" });
  const spark = el("div");
  const instances = el("div");
  const exceptions = el("ul", { id: "exceptions" });
  const config = el("pre", { id: "config" });
  const log = el("ol", { class: "log", id: "log", "aria-label": "Live log" });

  const triggerValue = el("textarea", { id: "trigger-value", spellcheck: "false" });
  const triggerOutput = el("pre", { id: "trigger-output" }, "—");
  const trigger = el(
    "form",
    { id: "trigger" },
    el("label", { for: "trigger-value" }, "Value to put on the input topic"),
    triggerValue,
    el("div", { class: "row" }, el("button", { type: "submit" }, "Trigger")),
  );
  trigger.addEventListener("submit", async (event) => {
    event.preventDefault();
    triggerOutput.textContent = "Waiting for the output…";
    try {
      const form = new FormData();
      form.append("data", new Blob([triggerValue.value]), "data");
      const answer = await api("POST", `${base}/trigger`, { form });
      triggerOutput.textContent = answer.value ?? answer.valueBase64 ?? "(the function gave no output)";
      say(`Triggered: input message ${answer.inputMessageId}.`);
    } catch (error) {
      triggerOutput.textContent = error.message;
      say(error.message, true);
    }
  });

  const prefix = el("input", { id: "state-prefix", spellcheck: "false", autocomplete: "off" });
  const keys = el("ul", { class: "keys", id: "state-keys" });
  const value = el("pre", { id: "state-value" }, "—");
  const more = el("button", { type: "button", hidden: true }, "More keys");
  let after = null;
  const listKeys = async (fresh) => {
    try {
      const query = new URLSearchParams({ prefix: prefix.value, limit: "100" });
      if (!fresh && after) query.set("after", after);
      const page = await api("GET", `${base}/state?${query}`);
      if (fresh) keys.replaceChildren();
      for (const key of page.keys) {
        const show = async () => {
          try {
            value.textContent = JSON.stringify(await api("GET", `${base}/state/${segment(key)}`), null, 2);
          } catch (error) {
            value.textContent = error.message;
          }
        };
        keys.append(el("li", {}, el("button", { type: "button", onclick: show }, key)));
      }
      if (fresh && !page.keys.length) keys.append(el("li", {}, "No keys."));
      after = page.nextAfter ?? null;
      more.hidden = !after;
    } catch (error) {
      say(error.message, true);
    }
  };
  more.addEventListener("click", () => listKeys(false));
  const browse = el(
    "form",
    { id: "state", class: "row" },
    el("label", { for: "state-prefix" }, "Key prefix"),
    prefix,
    el("button", { type: "submit" }, "List keys"),
  );
  browse.addEventListener("submit", (event) => {
    event.preventDefault();
    listKeys(true);
  });

  $("main").append(
    el("h1", {}, `${session.tenant}/${session.namespace}/${name}`),
    el("h2", {}, "Counts"),
    counts,
    spark,
    el("div", { class: "grid" },
      el("section", { "aria-labelledby": "trigger-heading" }, el("h2", { id: "trigger-heading" }, "Trigger"), trigger, el("h3", {}, "Output"), triggerOutput),
      el("section", { "aria-labelledby": "state-heading" }, el("h2", { id: "state-heading" }, "State"), browse, keys, more, el("h3", {}, "Value"), value),
    ),
    el("h2", {}, "Instances"),
    instances,
    el("h2", {}, "Latest exceptions"),
    exceptions,
    el("h2", {}, "Live log"),
    log,
    el("h2", {}, "Config"),
    config,
  );

  api("GET", base)
    .then((spec) => (config.textContent = JSON.stringify(spec, null, 2)))
    .catch((error) => say(error.message, true));
  follow(`${base}/logs?follow=true&tail=100`, log);

  every(async () => {
    const [status, stats] = await Promise.all([api("GET", `${base}/status`), api("GET", `${base}/stats`)]);
    // Pulsar's FunctionStats has the totals at the top level, beside `instances`.
    const totals = stats;
    const rates = sample(`${session.tenant}/${session.namespace}/${name}`, totals);
    const quantiles = totals.processLatencyQuantiles ?? {};
    const shownCounts = [
      ["received", "Received", number(totals.receivedTotal)],
      ["processed", "Processed", number(totals.processedSuccessfullyTotal)],
      ["user-exceptions", "User exceptions", number(totals.userExceptionsTotal)],
      ["system-exceptions", "System exceptions", number(totals.systemExceptionsTotal)],
      ["dead-lettered", "Dead-lettered", number(totals.deadLetteredTotal)],
      ["rate-in", "In /s", number(rates.in, 1)],
      ["p50", "p50 ms", number(quantiles.p50, 2)],
      ["p99", "p99 ms", number(quantiles.p99, 2)],
    ];
    counts.replaceChildren(
      ...shownCounts.map(([id, label, shownValue]) => el("div", {}, el("dt", {}, label), el("dd", { "data-count": id }, shownValue))),
    );
    spark.replaceChildren(sparkline(rates.recent, "messages in per second, last minutes", true));
    const rows = status.instances.map(({ instanceId, status: instance }) =>
      el(
        "tr",
        {},
        el("td", { class: "number" }, String(instanceId)),
        el("td", { class: instance.running ? "running" : "stopped" }, instance.running ? "running" : "stopped"),
        el("td", {}, instance.workerId ?? "this worker"),
        el("td", { class: "number" }, number(instance.numRestarts)),
        el("td", { class: "number" }, number(instance.numReceived)),
        el("td", { class: "number" }, number(instance.numSuccessfullyProcessed)),
        el("td", { class: "error" }, instance.error || ""),
      ),
    );
    const columns = [["Instance", true], ["Status"], ["Worker"], ["Restarts", true], ["Received", true], ["Processed", true], ["Error"]];
    instances.replaceChildren(table(`Instances of ${name}`, columns, rows));
    const latest = status.instances.flatMap(({ instanceId, status: instance }) =>
      [...instance.latestUserExceptions, ...instance.latestSystemExceptions].map((exception) => ({ instanceId, ...exception })),
    );
    latest.sort((a, b) => b.timestampMs - a.timestampMs);
    exceptions.replaceChildren(
      ...(latest.length
        ? latest.slice(0, 20).map((exception) =>
            el("li", {}, `${new Date(exception.timestampMs).toISOString()} instance ${exception.instanceId}: ${exception.exceptionString}`),
          )
        : [el("li", {}, "None.")]),
    );
  });
}

/** Follows a function's log (server-sent events read with fetch, which can send the token). */
async function follow(path, list) {
  const mine = shown;
  try {
    const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal: mine.controller.signal });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({}));
      throw new Error(answer.reason ?? `HTTP ${response.status}`);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).trimStart())
          .join("\n");
        if (!data) continue;
        const line = JSON.parse(data);
        const time = new Date(line.time).toISOString();
        list.append(el("li", {}, `${time} ${line.level} [instance ${line.instanceId}] ${line.message}`));
        while (list.childElementCount > LOG_LINES) list.firstElementChild.remove();
      }
    }
  } catch (error) {
    if (!mine.stopped) say(`The live log stopped: ${error.message}`, true);
  }
}

// --- Topics -------------------------------------------------------------------------------------

function topicsPage() {
  const { tenant, namespace } = session;
  const namespacePath = `/admin/v2/namespaces/${segment(tenant)}/${segment(namespace)}`;
  const topicsPath = `/admin/v2/persistent/${segment(tenant)}/${segment(namespace)}`;
  const retention = el("p", { id: "retention" }, "Retention: …");
  const body = el("div", { id: "topics" });
  $("main").append(el("h1", {}, `Topics in ${tenant}/${namespace}`), retention, body);
  let known = "";

  const resetForm = (topic, subscription) => {
    const id = `reset-${topic}-${subscription}`.replace(/[^A-Za-z0-9_-]/g, "_");
    const minutes = el("input", { id, type: "number", min: "0", value: "10", class: "minutes" });
    const form = el(
      "form",
      { class: "row" },
      el("label", { for: id }, `Minutes back for ${subscription}`),
      minutes,
      el("button", { type: "submit" }, "Reset cursor"),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const timestamp = Date.now() - Number(minutes.value) * 60_000;
      try {
        await api("POST", `${topicsPath}/${segment(topic)}/subscription/${segment(subscription)}/resetcursor/${timestamp}`);
        say(`${subscription} on ${topic} now starts at ${new Date(timestamp).toISOString()}.`);
      } catch (error) {
        say(error.message, true);
      }
    });
    return form;
  };

  every(async () => {
    const policy = await api("GET", `${namespacePath}/retention`);
    const minutes = policy.retentionTimeInMinutes;
    const megabytes = policy.retentionSizeInMB;
    retention.textContent =
      minutes === 0 && megabytes === 0
        ? "Retention: none; a message goes once every subscription has acknowledged it."
        : `Retention: acknowledged messages kept ${minutes < 0 ? "with no time limit" : `${minutes} minutes`}, ${megabytes < 0 ? "with no size limit" : `up to ${megabytes} MB`}.`;
    const topics = await api("GET", topicsPath);
    const stats = await Promise.all(
      topics.map(async (full) => {
        const short = full.split("/").at(-1);
        return { short, stats: await api("GET", `${topicsPath}/${segment(short)}/stats`) };
      }),
    );
    const shape = JSON.stringify(stats.map(({ short, stats }) => [short, Object.keys(stats.subscriptions)]));
    if (shape !== known) {
      // The set of topics or subscriptions changed: build the table again (else only its numbers
      // change, so a reset form being filled in stays as it is).
      known = shape;
      const rows = stats.map(({ short, stats }) =>
        el(
          "tr",
          { "data-topic": short },
          el("th", { scope: "row" }, short),
          el("td", { class: "number", "data-cell": "rate" }),
          el("td", { class: "number", "data-cell": "backlog" }),
          el("td", { class: "number", "data-cell": "storage" }),
          el(
            "td",
            {},
            Object.keys(stats.subscriptions).length
              ? el("ul", {}, Object.keys(stats.subscriptions).map((name) =>
                  el("li", { "data-subscription": name }, el("span", { "data-cell": "subscription" }), resetForm(short, name)),
                ))
              : "none",
          ),
        ),
      );
      const columns = [["Topic"], ["In /s", true], ["Backlog", true], ["Stored", true], ["Subscriptions"]];
      body.replaceChildren(
        rows.length ? table(`Topics of ${tenant}/${namespace}`, columns, rows) : el("p", {}, "No topics here yet."),
      );
    }
    for (const { short, stats: topic } of stats) {
      const row = body.querySelector(`tr[data-topic="${CSS.escape(short)}"]`);
      if (!row) continue;
      row.querySelector('[data-cell="rate"]').textContent = number(topic.msgRateIn, 1);
      row.querySelector('[data-cell="backlog"]').textContent = number(topic.backlogSize);
      row.querySelector('[data-cell="storage"]').textContent = bytes(topic.storageSize);
      for (const [name, subscription] of Object.entries(topic.subscriptions)) {
        const item = row.querySelector(`[data-subscription="${CSS.escape(name)}"] [data-cell="subscription"]`);
        if (item) item.textContent = `${name}: ${number(subscription.msgBacklog)} behind, ${subscription.consumers} consumers`;
      }
    }
  });
}

// --- The cluster --------------------------------------------------------------------------------

function clusterPage() {
  const who = session.who;
  const body = el("div", { id: "cluster" });
  $("main").append(el("h1", {}, "Cluster"), body);
  if (!who.operator || !who.cluster) {
    body.append(el("p", {}, who.cluster ? "Only the operator's token shows the cluster." : "This worker is not in a cluster."));
    return;
  }
  every(async () => {
    const cluster = await api("GET", "/admin/v2/worker/cluster");
    const workers = cluster.workers.map((worker) =>
      el("tr", {}, el("td", {}, worker.workerId), el("td", {}, worker.url), el("td", {}, worker.workerId === cluster.leader ? "leader" : "")),
    );
    const assignments = Object.entries(cluster.assignments).map(([fqfn, placed]) =>
      el("tr", {}, el("td", {}, fqfn), el("td", {}, placed.map((worker, id) => `${id}: ${worker ?? "unassigned"}`).join(", "))),
    );
    body.replaceChildren(
      el("h2", {}, "Members"),
      table("Members of the cluster", [["Worker"], ["URL"], ["Role"]], workers),
      el("h2", {}, "Assignments"),
      table("Which worker runs each instance", [["Function"], ["Instances"]], assignments),
    );
  });
}

// --- Start --------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("scope").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!session.who?.tenant) session.write("tenant", $("scope-tenant").value.trim() || "public");
    session.write("namespace", $("scope-namespace").value.trim() || "default");
    route();
  });
  $("sign-out").addEventListener("click", () => {
    session.clear();
    history.clear();
    say("Signed out.");
    location.hash = "";
    route();
  });
  window.addEventListener("hashchange", () => {
    route();
    $("main").focus();
  });
  route();
});
