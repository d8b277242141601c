// gslb agent inspector: polls the JSON API and renders it.
// Everything that comes from a request (paths, headers, bodies) is
// attacker-controlled: it is only ever put in the page with textContent or
// input values, never innerHTML (docs/inspector.md, "Security").
"use strict";

const POLL_MS = 500;
const state = { version: -1, filterKey: "", selected: null, detailVersion: -1 };

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function filterQuery() {
  const q = new URLSearchParams({ summary: "1", limit: "500" });
  const path = $("f-path").value.trim(), status = $("f-status").value.trim(), min = $("f-min").value.trim();
  if (path) q.set("path", path);
  if (status) q.set("status", status);
  if (min) q.set("min_ms", min);
  return q.toString();
}

function fmtSize(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "…";
  return ms < 1000 ? ms.toFixed(1) + " ms" : (ms / 1000).toFixed(2) + " s";
}

function renderList(items) {
  const tbody = $("list").tBodies[0];
  const rows = document.createDocumentFragment();
  for (const r of items) {
    const tr = el("tr", null, "entry");
    tr.dataset.id = r.id;
    if (r.replay_of) tr.classList.add("replay");
    if (r.id === state.selected) tr.classList.add("selected");
    tr.append(
      el("td", r.start.slice(11, 23), "time"),
      el("td", r.method, "method"),
      el("td", r.path, "path"),
      el("td", r.status_code === null ? (r.error ? "error" : "…") : r.status_code,
         "status" + (r.status_code ? " s" + String(r.status_code)[0] : "")),
      el("td", r.websocket ? "ws " + r.websocket.frames_out + "↑ " + r.websocket.frames_in + "↓" : fmtMs(r.duration_ms),
         "duration"),
      el("td", fmtSize(r.size), "size"),
      el("td", r.remote_addr, "client"),
    );
    tr.addEventListener("click", () => select(r.id));
    rows.append(tr);
  }
  tbody.replaceChildren(rows);
}

function renderHeaders(table, list) {
  const rows = (list || []).map(([k, v]) => { const tr = el("tr"); tr.append(el("td", k), el("td", v)); return tr; });
  table.replaceChildren(...rows);
}

function renderBody(metaEl, preEl, body) {
  if (!body) { metaEl.textContent = ""; preEl.textContent = ""; preEl.hidden = true; return; }
  preEl.hidden = !body.text;
  metaEl.replaceChildren(el("span", body.kind + ", " + fmtSize(body.size) + (body.note ? ", " + body.note : "")));
  if (body.truncated) metaEl.append(" ", el("span", "truncated: " + fmtSize(body.captured) + " captured", "truncated"));
  if (body.error) metaEl.append(" ", el("span", body.error, "truncated"));
  preEl.textContent = body.text;
}

async function select(id) {
  state.selected = id;
  state.detailVersion = -1;
  for (const tr of $("list").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === id);
  $("replay-result").textContent = "";
  $("edit").hidden = true;
  await loadDetail(true);
}

async function loadDetail(fillForm) {
  const id = state.selected;
  if (!id) return;
  const r = await fetch("/api/requests/http/" + encodeURIComponent(id) + "?views=1");
  if (!r.ok) { $("detail").hidden = true; state.selected = null; return; }
  const d = await r.json();
  if (state.selected !== id) return;
  const req = d.request, resp = d.response;
  $("detail").hidden = false;
  $("d-title").textContent = req.method + " " + req.uri;
  const meta = [
    resp ? resp.status : (d.error ? "error: " + d.error : "waiting for the response"),
    "tunnel " + d.tunnel_name, "from " + d.remote_addr, d.start,
    (d.duration / 1e6).toFixed(1) + " ms",
  ];
  if (d.replay_of) meta.push("replay of " + d.replay_of);
  if (d.websocket) meta.push("websocket frames: " + d.websocket.frames_out + " sent, " + d.websocket.frames_in + " received");
  $("d-meta").textContent = meta.join(" · ");
  renderHeaders($("d-req-headers"), req.header_list);
  renderBody($("d-req-meta"), $("d-req-body"), req.body);
  renderHeaders($("d-resp-headers"), resp ? resp.header_list : []);
  renderBody($("d-resp-meta"), $("d-resp-body"), resp ? resp.body : null);
  if (fillForm) {
    $("edit-method").value = req.method;
    $("edit-path").value = req.uri;
    $("edit-headers").value = req.header_list.map(([k, v]) => k + ": " + v).join("\n");
    $("edit-body").value = req.body.kind === "binary" ? "" : req.body.text;
  }
}

async function replay(edits) {
  const body = Object.assign({ id: state.selected }, edits || {});
  const r = await fetch("/api/requests/http", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  if (r.status === 204) {
    $("replay-result").textContent = "replayed: " + (r.headers.get("Location") || "").split("/").pop();
  } else {
    const e = await r.json().catch(() => ({ msg: r.statusText }));
    $("replay-result").textContent = "replay failed: " + e.msg;
  }
  poll();
}

function editedRequest() {
  const headers = [];
  for (const line of $("edit-headers").value.split("\n")) {
    if (!line.trim()) continue;
    const i = line.indexOf(":");
    if (i > 0) headers.push([line.slice(0, i).trim(), line.slice(i + 1).trim()]);
  }
  return { method: $("edit-method").value.trim(), path: $("edit-path").value.trim(), headers, body: $("edit-body").value };
}

async function loadTunnels() {
  const r = await fetch("/api/tunnels");
  if (!r.ok) return;
  const d = await r.json();
  $("tunnels").replaceChildren(...d.tunnels.map(
    t => el("li", t.public_url + " → " + t.config.addr + (t.config.inspect ? "" : " (not inspected)"))));
}

async function poll() {
  try {
    const fq = filterQuery();
    const since = fq === state.filterKey ? "&unless_version=" + state.version : "";
    const r = await fetch("/api/requests/http?" + fq + since);
    if (r.ok) {
      const d = await r.json();
      if (!d.unchanged) {
        state.version = d.version;
        state.filterKey = fq;
        renderList(d.requests);
        $("status-line").textContent = d.requests.length + " shown, " + d.store.entries + " held, " +
          fmtSize(d.store.bytes) + " captured";
        if (state.selected && state.detailVersion !== d.version) {
          state.detailVersion = d.version;
          loadDetail(false);
        }
      }
    }
  } catch (e) {
    $("status-line").textContent = "agent unreachable: " + e;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("clear").addEventListener("click", async () => {
    await fetch("/api/requests/http", { method: "DELETE" });
    state.selected = null;
    $("detail").hidden = true;
    poll();
  });
  $("replay").addEventListener("click", () => replay());
  $("edit-toggle").addEventListener("click", () => { $("edit").hidden = !$("edit").hidden; });
  $("edit-send").addEventListener("click", () => replay(editedRequest()));
  for (const id of ["f-path", "f-status", "f-min"]) $(id).addEventListener("input", poll);
  $("filters").addEventListener("submit", e => e.preventDefault());
  loadTunnels();
  setInterval(loadTunnels, 5000);
  poll();
  setInterval(poll, POLL_MS);
});
