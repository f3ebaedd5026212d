// Ferry's web console: one page, routed by the URL's hash, reading the
// admin JSON API. Everything shown comes from the API when the page is
// drawn; the charts keep only the samples polled since the page opened.
"use strict";

const POLL_MS = 2000;
const CHART_POINTS = 90;

// Builds an element: h("td", {class: "num"}, "12"). Text is always set as
// text, never parsed as HTML: message bodies and names come from clients.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function table(headers, rows, attrs) {
  return h("table", attrs, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => (c instanceof Node && c.tagName === "TD" ? c : h("td", {}, c)))))));
}

const num = (n) => h("td", { class: "num" }, n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
const enc = encodeURIComponent;

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = false;
  setTimeout(() => { box.hidden = true; }, 8000);
}

async function api(method, path, body, headers) {
  const init = { method, headers: Object.assign({}, headers) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, init);
  const text = await r.text();
  const json = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error(json && json.message ? json.message : `${method} ${path}: ${r.status}`);
  return json;
}
const get = (path) => api("GET", path);

// A line chart of named series on a canvas; each series is an array of
// numbers, newest last.
function drawChart(canvas, series) {
  // How many samples are drawn, for tests and curious operators.
  canvas.dataset.samples = Math.max(...series.map((s) => s.values.length));
  const ctx = canvas.getContext("2d");
  const w = canvas.width, hgt = canvas.height, pad = 30;
  ctx.clearRect(0, 0, w, hgt);
  const all = series.flatMap((s) => s.values);
  const max = Math.max(1, ...all);
  ctx.strokeStyle = "#d5dde6";
  ctx.fillStyle = "#6b7785";
  ctx.font = "11px sans-serif";
  for (const f of [0, 0.5, 1]) {
    const y = hgt - pad - f * (hgt - 2 * pad);
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w - 5, y); ctx.stroke();
    ctx.fillText((max * f).toFixed(max * f >= 10 ? 0 : 1), 2, y + 4);
  }
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.values.forEach((v, i) => {
      const x = pad + (i * (w - pad - 5)) / (CHART_POINTS - 1);
      const y = hgt - pad - (v / max) * (hgt - 2 * pad);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

function legend(series) {
  return h("div", { class: "legend" }, series.map((s) => h("span", { style: `color:${s.color}` }, "● " + s.name)));
}

function pushSample(values, v) {
  values.push(v);
  if (values.length > CHART_POINTS) values.shift();
}

// The page being shown stops its timers when another replaces it.
let timers = [];
function every(ms, f) {
  f();
  timers.push(setInterval(f, ms));
}

const pages = {
  async overview(page) {
    const rates = [{ name: "records in /s", color: "#1f77b4", values: [] }, { name: "records out /s", color: "#2ca02c", values: [] }];
    const cards = h("div", { class: "cards", id: "overview-cards" });
    const canvas = h("canvas", { id: "rates-chart", width: 720, height: 220 });
    page.append(h("h1", {}, "Overview"), cards, h("h2", {}, "Message rates (Kafka records)"), legend(rates), canvas);
    let last = null;
    every(POLL_MS, async () => {
      const o = await get("/api/overview");
      const now = performance.now();
      if (last) {
        const secs = (now - last.at) / 1000;
        pushSample(rates[0].values, Math.max(0, (o.message_rates.in_total - last.o.message_rates.in_total) / secs));
        pushSample(rates[1].values, Math.max(0, (o.message_rates.out_total - last.o.message_rates.out_total) / secs));
      }
      last = { o, at: now };
      const card = (label, value) => h("div", { class: "card" }, h("div", { class: "muted" }, label), h("div", { class: "value" }, value));
      cards.replaceChildren(
        card("version", o.version),
        card("uptime", `${Math.floor(o.uptime_ms / 1000)} s`),
        card("topics", o.counts.topics),
        card("records", o.counts.records.toLocaleString("en")),
        card("groups", o.counts.groups),
        card("queues", o.counts.queues),
        card("queued messages", o.counts.queue_messages.toLocaleString("en")),
        card("connections", o.connections),
        card("records in (total)", o.message_rates.in_total.toLocaleString("en")),
        card("records out (total)", o.message_rates.out_total.toLocaleString("en")),
      );
      drawChart(canvas, rates);
    });
  },

  async topics(page) {
    const name = h("input", { id: "new-topic-name", placeholder: "name", required: "" });
    const partitions = h("input", { id: "new-topic-partitions", type: "number", min: 1, value: 1 });
    const list = h("div", {});
    const refresh = async () => {
      const { topics } = await get("/api/topics");
      list.replaceChildren(table(["topic", "partitions", "records", "bytes"],
        topics.map((t) => [h("a", { href: `#/topics/${enc(t.name)}` }, t.name), num(t.partition_count), num(t.records), num(t.size_bytes)]),
        { id: "topics-table" }));
    };
    const create = async (e) => {
      e.preventDefault();
      await api("POST", "/api/topics", { name: name.value, partitions: Number(partitions.value) });
      name.value = "";
      await refresh();
    };
    page.append(h("h1", {}, "Topics"),
      h("form", { id: "create-topic", onsubmit: (e) => create(e).catch((err) => showError(err.message)) },
        "Create topic", name, "partitions", partitions, h("button", { type: "submit", id: "create-topic-submit" }, "Create")),
      list);
    await refresh();
  },

  async topic(page, [topicName]) {
    const t = await get(`/api/topics/${enc(topicName)}`);
    const partition = h("select", { id: "browse-partition" }, t.partitions.map((p) => h("option", { value: p.partition }, p.partition)));
    const offset = h("input", { id: "browse-offset", type: "number", placeholder: "from the start" });
    const records = h("div", { id: "records" });
    const browse = async (e) => {
      if (e) e.preventDefault();
      const q = offset.value === "" ? "" : `&offset=${enc(offset.value)}`;
      const pageOf = await get(`/api/topics/${enc(topicName)}/partitions/${partition.value}/records?limit=50${q}`);
      records.replaceChildren(table(["offset", "timestamp", "key", "value", "headers"],
        pageOf.records.map((r) => [num(r.offset), new Date(r.timestamp_ms).toISOString(), r.key ?? "", h("pre", { class: "body" }, r.value ?? ""),
          r.headers.map((x) => `${x.key}=${x.value ?? ""}`).join(", ")]),
        { id: "records-table" }),
      h("div", { class: "muted" }, `next offset ${pageOf.next_offset}, high watermark ${pageOf.high_watermark}`));
    };
    page.append(h("h1", {}, `Topic ${topicName}`),
      table(["partition", "status", "log start", "high watermark", "log end", "bytes"],
        t.partitions.map((p) => [num(p.partition), p.online ? "online" : `offline: ${p.error}`, num(p.log_start_offset), num(p.high_watermark), num(p.log_end_offset), num(p.size_bytes)]),
        { id: "partitions-table" }),
      h("h2", {}, "Messages"),
      h("form", { id: "browse", onsubmit: (e) => browse(e).catch((err) => showError(err.message)) },
        "partition", partition, "offset", offset, h("button", { type: "submit", id: "browse-submit" }, "Browse")),
      records);
  },

  async groups(page) {
    const { groups } = await get("/api/groups");
    page.append(h("h1", {}, "Consumer groups"),
      table(["group", "state", "members", "lag"],
        groups.map((g) => [h("a", { href: `#/groups/${enc(g.group_id)}` }, g.group_id), g.state, num(g.members), num(g.lag)]),
        { id: "groups-table" }));
  },

  async group(page, [groupId]) {
    const g = await get(`/api/groups/${enc(groupId)}`);
    page.append(h("h1", {}, `Group ${groupId}`),
      h("p", {}, `${g.state}, generation ${g.generation_id}, ${g.members.length} members, total lag ${g.lag}`),
      h("h2", {}, "Lag per partition"),
      table(["topic", "partition", "committed", "log end", "lag", "member"],
        g.offsets.map((o) => [o.topic, num(o.partition), num(o.committed_offset), num(o.log_end_offset), num(o.lag), o.member_id ?? ""]),
        { id: "group-offsets-table" }));
  },

  async exchanges(page) {
    const [{ exchanges }, { bindings }] = await Promise.all([get("/api/exchanges"), get("/api/bindings")]);
    page.append(h("h1", {}, "Exchanges"),
      table(["vhost", "name", "type", "durable", "internal"],
        exchanges.map((x) => [x.vhost, x.name === "" ? "(default)" : x.name, x.type, String(x.durable), String(x.internal)]),
        { id: "exchanges-table" }),
      h("h2", {}, "Bindings"),
      table(["vhost", "source", "destination", "type", "routing key"],
        bindings.map((b) => [b.vhost, b.source === "" ? "(default)" : b.source, b.destination, b.destination_type, b.routing_key]),
        { id: "bindings-table" }));
  },

  async queues(page) {
    const list = h("div", {});
    page.append(h("h1", {}, "Queues"), list);
    every(POLL_MS, async () => {
      const { queues } = await get("/api/queues");
      list.replaceChildren(table(["vhost", "name", "type", "ready", "in flight", "delayed", "consumers", "dead-letter exchange"],
        queues.map((q) => [q.vhost, h("a", { href: `#/queues/${enc(q.vhost)}/${enc(q.name)}` }, q.name), q.type,
          num(q.ready), num(q.in_flight), num(q.delayed), num(q.consumers), q.dead_letter_exchange ?? ""]),
        { id: "queues-table" }));
    });
  },

  async queue(page, [vhost, name]) {
    const path = `/api/queues/${enc(vhost)}/${enc(name)}`;
    const depth = [{ name: "ready", color: "#1f77b4", values: [] }, { name: "in flight", color: "#ff7f0e", values: [] }];
    const canvas = h("canvas", { id: "depth-chart", width: 720, height: 180 });
    const counts = h("p", { id: "queue-counts" });
    const messages = h("div", { id: "messages" });
    const result = h("p", { id: "redrive-result" });
    const peek = async () => {
      const p = await get(`${path}/messages?limit=50`);
      messages.replaceChildren(table(["id", "state", "deliveries", "routing key", "died in", "body"],
        p.messages.map((m) => [num(m.id), m.state, num(m.delivery_count), m.routing_key,
          m.deaths.map((d) => `${d.queue} (${d.reason})`).join(", "), h("pre", { class: "body" }, m.body)]),
        { id: "messages-table" }));
    };
    const redrive = async () => {
      const r = await api("POST", `${path}/redrive`, {});
      result.textContent = `moved ${r.moved}` + (r.stopped ? `; stopped: ${r.stopped}` : "");
      await peek();
    };
    page.append(h("h1", {}, `Queue ${name}`), h("div", { class: "muted" }, `vhost ${vhost}`), counts,
      h("h2", {}, "Depth"), legend(depth), canvas,
      h("h2", {}, "Messages"),
      h("div", {}, h("button", { id: "peek", onclick: () => peek().catch((e) => showError(e.message)) }, "Peek"),
        " ", h("button", { id: "redrive", onclick: () => redrive().catch((e) => showError(e.message)) }, "Redrive dead-lettered messages"),
        result),
      messages);
    every(POLL_MS, async () => {
      const q = await get(path);
      counts.textContent = `${q.ready} ready, ${q.in_flight} in flight, ${q.delayed} delayed, ${q.consumers} consumers`;
      pushSample(depth[0].values, q.ready);
      pushSample(depth[1].values, q.in_flight);
      drawChart(canvas, depth);
    });
    await peek();
  },

  async connections(page) {
    const list = h("div", {});
    const refresh = async () => {
      const { connections: conns } = await get("/api/connections");
      list.replaceChildren(table(["id", "protocol", "client address", "user", "vhost", "client", "channels", "bytes in", "bytes out", ""],
        conns.map((c) => [num(c.id), c.protocol, c.client_address, c.user ?? "", c.vhost ?? "", c.client ?? "", num(c.channels),
          num(c.bytes_in), num(c.bytes_out),
          h("button", { class: "close-connection", "data-id": c.id, onclick: () => close(c.id).catch((e) => showError(e.message)) }, "Close")]),
        { id: "connections-table" }));
    };
    const close = async (id) => {
      await api("DELETE", `/api/connections/${id}`, undefined, { "X-Reason": "Closed from the Ferry console" });
      await refresh();
    };
    page.append(h("h1", {}, "Connections"), list);
    every(POLL_MS, refresh);
  },
};

// "#/topics/orders" → pages.topic(page, ["orders"]).
const routes = [
  [/^#\/topics\/([^/]+)$/, "topic"],
  [/^#\/groups\/([^/]+)$/, "group"],
  [/^#\/queues\/([^/]+)\/([^/]+)$/, "queue"],
  [/^#\/(overview|topics|groups|exchanges|queues|connections)$/, null],
];

async function route() {
  timers.forEach(clearInterval);
  timers = [];
  const hash = location.hash || "#/overview";
  let name = "overview", args = [];
  for (const [re, page] of routes) {
    const m = hash.match(re);
    if (m) {
      name = page || m[1];
      args = page ? m.slice(1).map(decodeURIComponent) : [];
      break;
    }
  }
  const section = hash.split("/")[1] || "overview";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.id === `nav-${section}`));
  const page = h("div", { "data-page": name });
  document.getElementById("page").replaceChildren(page);
  try {
    await pages[name](page, args);
  } catch (e) {
    showError(e.message);
  }
}

// Errors in polling callbacks are shown rather than lost.
window.addEventListener("unhandledrejection", (e) => showError(e.reason && e.reason.message ? e.reason.message : String(e.reason)));
window.addEventListener("hashchange", route);
route();
