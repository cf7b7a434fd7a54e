// bootfarm console: renders /api/status of this node, live from /api/events (server-sent
// events), and merges the targets of the farm's other servers (their /api/status, polled).
// No library, no build step: this file is compiled into the bootfarm binary.
"use strict";

const PEER_POLL_MS = 2000;
let last = null;          // the last status document of this node
let prev = null;          // the one before, with its arrival time: rates are differences
let peers = {};           // server name -> its last status document (other servers)

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}

function badge(text, cls) { return el("span", { class: "badge " + (cls || text) }, text); }

function bytes(n) {
  if (n == null) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function ago(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function fill(table, rows) {
  const body = $(table).tBodies[0];
  body.replaceChildren(...rows);
}

function health(s) {
  if (!s.up) return "down";
  if (s.draining) return "draining";
  return "up";
}

function renderServers(st) {
  fill("servers", st.farm.servers.map((s) => {
    const reps = Object.entries(s.replicas || {}).map(([v, r]) => el("span", {}, v + " ", badge(r), " "));
    const active = s.active ? Object.values(s.active).reduce((a, b) => a + b, 0) : "–";
    const h = health(s);
    return el("tr", { "data-server": s.name, "data-health": h },
      el("td", {}, s.name + (s.self ? " (this node)" : "")),
      el("td", {}, s.address + ":" + s.http_port),
      el("td", {}, badge(h)),
      el("td", { class: "num" }, s.generation == null ? "–" : s.generation),
      el("td", { class: "num" }, s.power),
      el("td", { class: "num" }, s.booting == null ? "–" : s.booting),
      el("td", { class: "num" }, active),
      el("td", {}, ...reps),
      el("td", { class: "muted" }, s.last_error || ""));
  }));
}

function renderVdisks(st) {
  fill("vdisks", st.vdisks.map((v) => {
    const chain = el("span", { class: "chain" }, ...v.chain.slice().reverse().map((l, i) =>
      el("span", { title: l.path + " (" + l.id + ")" }, "v" + (i + 1) + " " + l.format + " " + bytes(l.file_bytes))));
    const holders = st.farm.servers
      .filter((s) => s.self || (s.replicas && s.replicas[v.name] === "match"))
      .map((s) => s.name);
    return el("tr", { "data-vdisk": v.name, "data-versions": v.chain.length },
      el("td", {}, v.name, v.damaged ? badge("damaged", "down") : ""),
      el("td", {}, v.mode),
      el("td", { class: "num" }, bytes(v.bytes)),
      el("td", {}, chain),
      el("td", {}, holders.join(", ")));
  }));
}

function renderTargets() {
  const docs = [last, ...Object.values(peers)].filter(Boolean);
  const rows = [];
  const recent = [];
  let total = 0;
  for (const d of docs) {
    total += d.targets_total.nbd + d.targets_total.http;
    for (const t of d.targets) rows.push([d.node, t]);
    for (const b of d.recent) recent.push([d.node, b]);
  }
  rows.sort((a, b) => a[1].age_ms - b[1].age_ms);
  recent.sort((a, b) => a[1].ended_ms_ago - b[1].ended_ms_ago);
  $("targets-count").textContent = "(" + total + ")";
  fill("targets", rows.map(([node, t]) => el("tr", { "data-target": t.id, "data-phase": t.phase, "data-server": node },
    el("td", {}, node), el("td", {}, t.id), el("td", {}, t.vdisk), el("td", {}, t.protocol),
    el("td", {}, badge(t.phase)), el("td", {}, ago(t.age_ms)), el("td", { class: "muted" }, t.client),
    el("td", { class: "num" }, t.protocol === "nbd" ? bytes(t.cache_bytes) : "–"),
    el("td", { class: "num" }, t.protocol === "nbd" ? bytes(t.written_bytes) : "–"))));
  fill("recent", recent.slice(0, 64).map(([node, b]) => el("tr", { "data-target": b.id, "data-server": node },
    el("td", {}, node), el("td", {}, b.id), el("td", {}, b.vdisk), el("td", { class: "num" }, ago(b.duration_ms)),
    el("td", {}, ago(b.ended_ms_ago) + " ago"), el("td", { class: "num" }, bytes(b.written_bytes)),
    el("td", { class: "muted" }, b.client))));
}

function renderRates(st, now) {
  const tiles = [];
  const t = st.totals;
  if (prev) {
    const dt = Math.max(0.001, (now - prev.at) / 1000);
    const p = prev.doc.totals;
    const r = (k) => Math.max(0, (t[k] - p[k]) / dt);
    tiles.push(["TFTP", bytes(r("tftp_bytes")) + "/s"], ["HTTP", bytes(r("http_bytes")) + "/s"],
      ["NBD", bytes(r("nbd_bytes")) + "/s"], ["TFTP transfers", r("tftp_completed").toFixed(1) + "/s"],
      ["HTTP responses", r("http_responses").toFixed(1) + "/s"]);
  }
  tiles.push(["Write cache", bytes(t.nbd_cache_bytes) + " of " + bytes(t.nbd_cache_bytes_max)],
    ["TFTP failed", t.tftp_failed], ["Sessions", "TFTP " + st.sessions.tftp + ", HTTP " + st.sessions.http]);
  $("rates").replaceChildren(...tiles.map(([k, v]) => el("div", { class: "tile" }, k, el("b", {}, v))));
}

function render(st) {
  const now = Date.now();
  if (last) prev = { doc: last, at: last._at };
  st._at = now;
  last = st;
  $("node").textContent = "node " + st.node;
  $("generation").textContent = "generation " + st.generation + (st.drained ? " · drained" : "") + (st.draining ? " · shutting down" : "");
  $("drain-box").hidden = !st.actions;
  renderServers(st);
  renderVdisks(st);
  renderTargets();
  renderRates(st, now);
}

function setLive(ok) {
  const b = $("live");
  b.textContent = ok ? "live" : "reconnecting";
  b.className = "badge " + (ok ? "up" : "down");
}

async function pollPeers() {
  if (last) {
    const others = last.farm.servers.filter((s) => !s.self);
    await Promise.all(others.map(async (s) => {
      const host = s.address.includes(":") ? "[" + s.address + "]" : s.address;
      try {
        const r = await fetch(location.protocol + "//" + host + ":" + s.http_port + "/api/status", { cache: "no-store" });
        peers[s.name] = r.ok ? await r.json() : null;
      } catch (e) {
        peers[s.name] = null; // down: its targets are not shown, its row says so
      }
    }));
    renderTargets();
  }
  setTimeout(pollPeers, PEER_POLL_MS);
}

async function act(path) {
  const r = await fetch(path, { method: "POST", headers: { Authorization: "Bearer " + $("token").value } });
  $("action-result").textContent = r.status === 200 ? "done" : (await r.text()).trim();
}

function start() {
  fetch("/api/status", { cache: "no-store" }).then((r) => r.json()).then(render).catch(() => setLive(false));
  const es = new EventSource("/api/events");
  es.onopen = () => setLive(true);
  es.onerror = () => setLive(false);
  es.onmessage = (e) => { setLive(true); render(JSON.parse(e.data)); };
  $("drain").onclick = () => act("/api/drain");
  $("resume").onclick = () => act("/api/resume");
  setTimeout(pollPeers, 300);
}

start();
