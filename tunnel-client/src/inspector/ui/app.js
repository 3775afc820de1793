// Porthole inspector UI: a client of the inspector's own JSON API and event stream.
// Captured data is untrusted: it only ever reaches the page through textContent.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
};
const SENSITIVE = /^(authorization|proxy-authorization|cookie|set-cookie|x-api-key|api-key|x-auth-token|x-access-token)$|token|secret|password|session/i;
const PAGE = 100;

const state = { items: [], selected: null, openId: null, detail: null, exhausted: false, views: {} };

// ---------- API ----------
async function api(path, opts = {}) {
  const resp = await fetch(path, { headers: { "content-type": "application/json" }, ...opts });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!resp.ok) throw new Error((data && data.error) || `${resp.status} ${resp.statusText}`);
  return data;
}

function filterParams() {
  const p = new URLSearchParams();
  const put = (k, v) => { if (v && v.trim()) p.set(k, v.trim()); };
  put("method", $("#f-method").value);
  put("status", $("#f-status").value);
  put("path", $("#f-path").value);
  put("q", $("#f-q").value);
  return p;
}

async function reload() {
  const p = filterParams();
  p.set("limit", PAGE);
  try {
    state.items = await api(`/api/requests?${p}`);
    state.exhausted = state.items.length < PAGE;
    renderList();
  } catch (e) { toast(e.message); }
  const har = filterParams();
  $("#export-all").href = `/api/har${har.toString() ? "?" + har : ""}`;
}

async function loadOlder() {
  const last = state.items[state.items.length - 1];
  if (!last) return;
  const p = filterParams();
  p.set("limit", PAGE);
  p.set("before", last.id);
  const more = await api(`/api/requests?${p}`);
  state.exhausted = more.length < PAGE;
  state.items.push(...more);
  renderList();
}

// Client-side check for live events; a text search needs the server, so it refetches.
function matches(s) {
  const m = $("#f-method").value, st = $("#f-status").value, path = $("#f-path").value.trim().toLowerCase();
  if (m && s.method.toUpperCase() !== m) return false;
  if (st === "none" && s.status !== null) return false;
  if (/^[1-5]xx$/.test(st) && (s.status === null || Math.floor(s.status / 100) !== Number(st[0]))) return false;
  if (path && !s.path.toLowerCase().includes(path)) return false;
  return true;
}

// ---------- list ----------
function fmtMs(ms) {
  if (ms === null || ms === undefined) return "";
  if (ms < 1) return `${ms.toFixed(2)}ms`;
  if (ms < 1000) return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)}ms`;
  return `${(ms / 1000).toFixed(2)}s`;
}
function fmtTime(iso) {
  const d = new Date(iso);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}
function statusClass(s) { return s.status === null ? "sx" : `s${Math.floor(s.status / 100)}`; }
function statusText(s) {
  if (s.status !== null) return s.status;
  return s.outcome === "target_timeout" ? "timeout" : "error";
}

// A webhook signature verdict: green when valid, red otherwise; the title says why.
function sigBadge(sig) {
  const ok = sig.result === "valid";
  const b = el("span", `sig ${ok ? "sig-ok" : "sig-bad"}`, ok ? `✓ ${sig.provider}` : `✗ ${sig.provider || "sig"}`);
  b.title = `${sig.provider}: ${sig.detail}`;
  b.dataset.result = sig.result;
  return b;
}

function rowFor(s) {
  const r = el("div", "row row-grid");
  r.dataset.id = s.id;
  r.setAttribute("role", "option");
  r.append(el("span", "id", s.id), el("span", `m m-${s.method}`, s.method));
  const path = el("span", "path");
  if (s.replay_of !== null) path.append(el("span", "replay", `↻${s.replay_of}`));
  if (s.signature) path.append(sigBadge(s.signature));
  if (s.outcome === "refused_at_edge") path.append(el("span", "sig sig-bad", "edge"));
  path.append(document.createTextNode(s.path));
  path.title = s.path;
  r.append(path, el("span", `num ${statusClass(s)}`, statusText(s)),
    el("span", "num dim", fmtMs(s.duration_ms)), el("span", "num dim", fmtTime(s.started_at)));
  r.addEventListener("click", () => { select(s.id); open(s.id); });
  if (s.id === state.selected) r.classList.add("sel");
  return r;
}

function renderList() {
  const list = $("#list");
  list.replaceChildren(...state.items.map(rowFor));
  $("#empty").hidden = state.items.length > 0;
  $("#more").hidden = state.exhausted || state.items.length === 0;
}

function select(id, scroll) {
  state.selected = id;
  for (const r of document.querySelectorAll("#list .row")) r.classList.toggle("sel", Number(r.dataset.id) === id);
  const row = document.querySelector(`#list .row[data-id="${id}"]`);
  if (row && scroll) row.scrollIntoView({ block: "nearest" });
}

function move(delta) {
  if (!state.items.length) return;
  let i = state.items.findIndex((s) => s.id === state.selected);
  i = i < 0 ? 0 : Math.max(0, Math.min(state.items.length - 1, i + delta));
  select(state.items[i].id, true);
}

// ---------- detail ----------
function b64bytes(b64) {
  const bin = atob(b64 || "");
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
function header(headers, name) {
  const h = headers.find((x) => x[0].toLowerCase() === name);
  return h && h.length === 2 ? h[1] : "";
}

async function open(id) {
  state.openId = id;
  try {
    const d = await api(`/api/requests/${id}`);
    if (state.openId !== id) return;
    state.detail = d;
    renderDetail(d);
  } catch (e) { toast(e.message); }
}

function renderDetail(d) {
  const pane = $("#detail");
  const top = el("div", "summary");
  top.append(el("span", `m m-${d.method}`, d.method), el("h1", null, d.path),
    el("span", `badge ${statusClass(d)}`, d.status !== null ? `${d.status} ${d.response.reason || ""}`.trim() : statusText(d)));
  if (d.signature) {
    const b = sigBadge(d.signature);
    b.id = "signature";
    b.textContent = `${b.textContent} · ${d.signature.detail}`;
    top.append(b);
  }
  const facts = el("div", "facts");
  const fact = (label, value) => { const f = el("span", null, `${label} `); f.append(el("b", null, value)); facts.append(f); };
  facts.append(el("b", null, `#${d.id}`));
  fact("at", new Date(d.started_at).toLocaleString());
  fact("total", fmtMs(d.duration_ms));
  if (d.time_to_head_ms !== null) fact("first byte", fmtMs(d.time_to_head_ms));
  fact("tunnel", d.tunnel || "—");
  fact("target", d.target);
  if (d.visitor) fact("from", d.visitor);
  if (d.replay_of !== null) {
    const f = el("span", null, "replay of ");
    const a = el("a", null, `#${d.replay_of}`);
    a.href = "#";
    a.addEventListener("click", (ev) => { ev.preventDefault(); select(d.replay_of, true); open(d.replay_of); });
    f.append(a);
    facts.append(f);
  }
  const timing = el("div", "timing");
  if (d.duration_ms > 0 && d.time_to_head_ms !== null) {
    const w = el("span", "wait"), r = el("span", "recv");
    w.style.width = `${(100 * d.time_to_head_ms) / d.duration_ms}%`;
    r.style.width = `${100 - (100 * d.time_to_head_ms) / d.duration_ms}%`;
    w.title = `waiting for target ${fmtMs(d.time_to_head_ms)}`;
    r.title = `response body ${fmtMs(d.duration_ms - d.time_to_head_ms)}`;
    timing.append(w, r);
  }
  const actions = el("div", "actions");
  const button = (id, label, cls, fn, key) => {
    const b = el("button", `btn ${cls}`, label);
    if (key) b.append(el("kbd", "hint", key));
    b.id = id; b.type = "button"; b.addEventListener("click", fn); actions.append(b); return b;
  };
  button("btn-replay", "Replay", "primary", () => replay(d.id), "r");
  button("btn-edit", "Edit & replay", "", () => openEditor(d), "e");
  button("btn-curl", "Copy as curl", "", () => copy(curl(d), "curl command copied"));
  const har = el("a", "btn", "Export HAR");
  har.href = `/api/requests/${d.id}/har`;
  har.setAttribute("download", `porthole-${d.id}.har`);
  actions.append(har);
  const parts = [top, facts, timing, actions];
  if (d.error) parts.push(el("div", "error-line", `${d.outcome}: ${d.error}`));
  parts.push(part("Request", "req", d.request, d.id));
  if (d.response) parts.push(part("Response", "resp", d.response, d.id));
  pane.replaceChildren(...parts);
}

function part(title, key, p, id) {
  const sec = el("section", "part");
  sec.id = `${key}-part`;
  const head = el("header");
  head.append(el("h2", null, title));
  if (key === "resp") head.append(el("span", `badge ${p.status >= 500 ? "s5" : "s" + Math.floor(p.status / 100)}`, p.status));
  head.append(el("span", "grow"));
  sec.append(head, headersTable(p.headers));
  const bytes = b64bytes(p.body_base64);
  if (bytes.length === 0) {
    sec.append(el("div", "body-note", p.body_size > 0 ? `${p.body_size} bytes, none captured` : "No body"));
    return sec;
  }
  const ctype = header(p.headers, "content-type").toLowerCase();
  const modes = [];
  const pretty = prettyView(ctype, p.body_text);
  if (pretty) modes.push(["pretty", "Pretty"]);
  if (p.body_text !== null) modes.push(["raw", "Raw"]);
  modes.push(["hex", "Hex"]);
  const tabs = el("span", "tabs");
  const bodyBox = el("div", "body-box");
  bodyBox.id = `${key}-body`;
  const show = (mode) => {
    state.views[key] = mode;
    for (const b of tabs.children) b.classList.toggle("on", b.dataset.mode === mode);
    if (mode === "pretty") bodyBox.replaceChildren(pretty());
    else if (mode === "raw") bodyBox.replaceChildren(el("pre", "body raw", p.body_text));
    else bodyBox.replaceChildren(hexView(bytes));
  };
  for (const [mode, label] of modes) {
    const b = el("button", null, label);
    b.type = "button";
    b.dataset.mode = mode;
    b.addEventListener("click", () => show(mode));
    tabs.append(b);
  }
  const dl = el("a", "btn ghost", "Download");
  dl.href = `/api/requests/${id}/body?part=${key === "req" ? "request" : "response"}`;
  dl.setAttribute("download", "");
  head.append(tabs, dl);
  sec.append(bodyBox);
  const pref = state.views[key];
  show(modes.some((m) => m[0] === pref) ? pref : modes[0][0]);
  const note = `${p.body_size} bytes${ctype ? " · " + ctype : ""}`;
  sec.append(el("div", "body-note", p.body_truncated ? `${note} · showing the first ${bytes.length} bytes (truncated)` : note));
  return sec;
}

function headersTable(headers) {
  const t = el("table", "headers");
  for (const h of headers) {
    const tr = el("tr");
    const val = el("td");
    const text = h.length === 3 ? `(binary, base64) ${h[1]}` : h[1];
    if (SENSITIVE.test(h[0])) {
      const m = el("span", "masked", "••••••••");
      m.title = "Click to reveal";
      m.addEventListener("click", () => { val.replaceChildren(document.createTextNode(text)); });
      val.append(m);
    } else val.textContent = text;
    tr.append(el("td", null, h[0]), val);
    t.append(tr);
  }
  return t;
}

// Returns a renderer for a pretty view of the body, or null when there is none.
function prettyView(ctype, text) {
  if (text === null) return null;
  const trimmed = text.trim();
  if (ctype.includes("json") || /^[[{]/.test(trimmed)) {
    try { const v = JSON.parse(text); return () => jsonView(v); } catch (_) { /* not JSON */ }
  }
  if (ctype.includes("x-www-form-urlencoded")) return () => formView(text);
  if (ctype.includes("xml") || (trimmed.startsWith("<") && !ctype.includes("html"))) {
    const doc = new DOMParser().parseFromString(text, "application/xml");
    if (!doc.querySelector("parsererror")) return () => el("pre", "body pretty", xmlPretty(doc.documentElement, 0));
  }
  return null;
}

function jsonView(value) {
  const pre = el("pre", "body pretty json");
  const put = (cls, t) => pre.append(cls ? el("span", cls, t) : document.createTextNode(t));
  const walk = (v, ind) => {
    const pad = "  ".repeat(ind);
    if (Array.isArray(v)) {
      if (!v.length) return put("j-p", "[]");
      put("j-p", "[\n");
      v.forEach((x, i) => { put(null, pad + "  "); walk(x, ind + 1); put("j-p", i < v.length - 1 ? ",\n" : "\n"); });
      put("j-p", pad + "]");
    } else if (v && typeof v === "object") {
      const keys = Object.keys(v);
      if (!keys.length) return put("j-p", "{}");
      put("j-p", "{\n");
      keys.forEach((k, i) => {
        put(null, pad + "  "); put("j-k", JSON.stringify(k)); put("j-p", ": ");
        walk(v[k], ind + 1); put("j-p", i < keys.length - 1 ? ",\n" : "\n");
      });
      put("j-p", pad + "}");
    } else if (typeof v === "string") put("j-s", JSON.stringify(v));
    else if (typeof v === "number") put("j-n", String(v));
    else put("j-b", String(v));
  };
  walk(value, 0);
  return pre;
}

function formView(text) {
  const t = el("table", "form");
  for (const [k, v] of new URLSearchParams(text)) {
    const tr = el("tr");
    tr.append(el("td", "j-k", k), el("td", "j-s", v));
    t.append(tr);
  }
  return t;
}

function xmlPretty(node, ind) {
  const pad = "  ".repeat(ind);
  const attrs = Array.from(node.attributes || []).map((a) => ` ${a.name}="${a.value}"`).join("");
  const kids = Array.from(node.childNodes).filter((c) => c.nodeType !== 3 || c.nodeValue.trim());
  if (!kids.length) return `${pad}<${node.nodeName}${attrs}/>\n`;
  if (kids.length === 1 && kids[0].nodeType === 3) return `${pad}<${node.nodeName}${attrs}>${kids[0].nodeValue.trim()}</${node.nodeName}>\n`;
  let out = `${pad}<${node.nodeName}${attrs}>\n`;
  for (const c of kids) {
    if (c.nodeType === 1) out += xmlPretty(c, ind + 1);
    else if (c.nodeType === 3 || c.nodeType === 4) out += `${pad}  ${c.nodeValue.trim()}\n`;
    else if (c.nodeType === 8) out += `${pad}  <!--${c.nodeValue}-->\n`;
  }
  return out + `${pad}</${node.nodeName}>\n`;
}

function hexView(bytes) {
  const pre = el("pre", "body hex");
  const max = Math.min(bytes.length, 64 * 1024);
  for (let off = 0; off < max; off += 16) {
    const chunk = bytes.slice(off, Math.min(off + 16, max));
    const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const asc = Array.from(chunk, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    pre.append(el("span", "off", off.toString(16).padStart(8, "0")), document.createTextNode(`  ${hex.padEnd(47)}  `), el("span", "asc", asc), document.createTextNode("\n"));
  }
  if (bytes.length > max) pre.append(el("span", "off", `… ${bytes.length - max} more bytes`));
  return pre;
}

// ---------- actions ----------
function shellQuote(s) { return `'${String(s).replace(/'/g, `'\\''`)}'`; }
function curl(d) {
  const host = header(d.request.headers, "host") || d.tunnel || "localhost";
  const parts = [`curl -X ${d.method} ${shellQuote(`http://${host}${d.path}`)}`];
  for (const h of d.request.headers) {
    if (h.length === 3 || ["host", "content-length"].includes(h[0].toLowerCase())) continue;
    parts.push(`-H ${shellQuote(`${h[0]}: ${h[1]}`)}`);
  }
  if (d.request.body_text !== null && d.request.body_text !== "") parts.push(`--data-binary ${shellQuote(d.request.body_text)}`);
  else if (d.request.body_size > 0) parts.push(`--data-binary @body.bin  # binary body: download it from the inspector`);
  return parts.join(" \\\n  ");
}

async function copy(text, done) {
  try { await navigator.clipboard.writeText(text); }
  catch (_) {
    const ta = el("textarea"); ta.value = text; document.body.append(ta); ta.select();
    document.execCommand("copy"); ta.remove();
  }
  toast(done);
}

async function replay(id, edits) {
  try {
    const r = await api(`/api/requests/${id}/replay`, { method: "POST", body: edits ? JSON.stringify(edits) : "" });
    toast(`Replayed #${id} as #${r.id}`);
    return r.id;
  } catch (e) { toast(`Replay failed: ${e.message}`); throw e; }
}

function openEditor(d) {
  const dlg = $("#editor");
  $("#edit-of").textContent = `#${d.id}`;
  $("#edit-method").value = d.method;
  $("#edit-path").value = d.path;
  const binary = d.request.headers.filter((h) => h.length === 3);
  $("#edit-headers").value = d.request.headers.filter((h) => h.length === 2 && h[0].toLowerCase() !== "content-length").map((h) => `${h[0]}: ${h[1]}`).join("\n");
  const body = $("#edit-body");
  body.value = d.request.body_text !== null ? d.request.body_text : "";
  body.disabled = d.request.body_text === null && !d.request.body_truncated;
  $("#edit-body-note").textContent = d.request.body_truncated ? "captured only in part: replace it to replay"
    : d.request.body_text === null && d.request.body_size ? "binary: sent as captured" : "";
  $("#edit-error").hidden = true;
  dlg.onsubmit = async (ev) => {
    ev.preventDefault();
    const headers = [];
    for (const line of $("#edit-headers").value.split("\n")) {
      if (!line.trim()) continue;
      const i = line.indexOf(":");
      if (i <= 0) { showEditError(`Header line needs "Name: value": ${line}`); return; }
      headers.push([line.slice(0, i).trim(), line.slice(i + 1).trim()]);
    }
    const edits = { method: $("#edit-method").value.trim(), path: $("#edit-path").value.trim(), headers: headers.concat(binary) };
    if (!body.disabled) edits.body = body.value;
    try { await replay(d.id, edits); dlg.close(); } catch (e) { showEditError(e.message); }
  };
  dlg.showModal();
  $("#edit-path").focus();
}
function showEditError(msg) { const e = $("#edit-error"); e.textContent = msg; e.hidden = false; }

let toastTimer;
function toast(msg) {
  const t = $("#toast");
  t.textContent = msg;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, 2600);
}

// ---------- live ----------
let searchTimer;
function connect() {
  const live = $("#live");
  const es = new EventSource("/api/events");
  es.onopen = () => { live.textContent = "live"; live.classList.add("on"); };
  es.onerror = () => { live.textContent = "reconnecting"; live.classList.remove("on"); };
  es.addEventListener("lagged", () => reload());
  es.onmessage = (ev) => {
    let s;
    try { s = JSON.parse(ev.data); } catch (_) { return; }
    if ($("#f-q").value.trim()) { clearTimeout(searchTimer); searchTimer = setTimeout(reload, 150); return; }
    if (!matches(s) || state.items.some((x) => x.id === s.id)) return;
    state.items.unshift(s);
    state.items.sort((a, b) => b.id - a.id);
    $("#empty").hidden = true;
    const row = rowFor(s);
    row.classList.add("fresh");
    const after = Array.from(document.querySelectorAll("#list .row")).find((r) => Number(r.dataset.id) < s.id);
    $("#list").insertBefore(row, after || null);
  };
}

// ---------- relay queue ----------
const queueView = { timer: null };
async function refreshQueue() {
  const rows = $("#queue-rows"), note = $("#queue-note");
  try {
    const data = await api("/api/queue?limit=100");
    const entries = (data && data.entries) || [];
    rows.replaceChildren(...entries.map(queueRow));
    note.textContent = entries.length ? `${entries.length} entries, newest first · refreshes every 3s` : "The queue is empty.";
    note.className = "dim";
  } catch (e) {
    rows.replaceChildren();
    note.textContent = e.message;
    note.className = "error";
  }
}
function queueRow(q) {
  const tr = el("tr");
  const last = q.last_error || (q.last_status ? String(q.last_status) : "");
  const cells = [
    el("td", "dim", q.id), el("td", "", q.name), el("td", "", q.method),
    el("td", "path", q.uri), el("td", `qs-${q.state}`, q.state), el("td", "num", q.attempts),
    el("td", "", last), el("td", "dim", q.received_at ? fmtTime(new Date(q.received_at).toISOString()) : ""),
  ];
  const act = el("td");
  const button = (label, op) => {
    const b = el("button", "btn ghost", label);
    b.type = "button";
    b.addEventListener("click", async () => {
      if (op === "drop" && !confirm(`Drop queued exchange ${q.id}?`)) return;
      b.disabled = true;
      try { const r = await api(`/api/queue/${q.id}/${op}`, { method: "POST" }); toast((r && r.ok) || "done"); }
      catch (e) { toast(e.message); }
      refreshQueue();
    });
    act.append(b);
  };
  if (q.state === "dead" || q.state === "queued") { button("Retry", "retry"); button("Drop", "drop"); }
  tr.append(...cells, act);
  return tr;
}
function openQueue() {
  $("#queue").showModal();
  refreshQueue();
  clearInterval(queueView.timer);
  queueView.timer = setInterval(refreshQueue, 3000);
}

// ---------- wiring ----------
function init() {
  let t;
  const refilter = () => { clearTimeout(t); t = setTimeout(reload, 180); };
  for (const id of ["#f-method", "#f-status"]) $(id).addEventListener("change", reload);
  for (const id of ["#f-path", "#f-q"]) $(id).addEventListener("input", refilter);
  $("#filters").addEventListener("submit", (e) => { e.preventDefault(); reload(); });
  $("#more").addEventListener("click", loadOlder);
  $("#edit-cancel").addEventListener("click", () => $("#editor").close());
  $("#queue-open").addEventListener("click", openQueue);
  $("#queue-close").addEventListener("click", () => $("#queue").close());
  $("#queue").addEventListener("close", () => { clearInterval(queueView.timer); queueView.timer = null; });
  $("#clear").addEventListener("click", async () => {
    if (!confirm("Delete the whole request history?")) return;
    await api("/api/requests", { method: "DELETE" });
    state.selected = state.openId = null;
    $("#detail").replaceChildren(el("div", "placeholder", "History cleared."));
    reload();
  });
  document.addEventListener("keydown", (e) => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(e.target.tagName);
    if (e.key === "Escape" && typing) { e.target.blur(); return; }
    if (typing || e.metaKey || e.ctrlKey || e.altKey || $("#editor").open || $("#queue").open) return;
    const id = state.selected;
    if (e.key === "j" || e.key === "ArrowDown") { move(1); e.preventDefault(); }
    else if (e.key === "k" || e.key === "ArrowUp") { move(-1); e.preventDefault(); }
    else if (e.key === "Enter" && id !== null) open(id);
    else if (e.key === "r" && id !== null) replay(id).catch(() => {});
    else if (e.key === "e" && state.detail) openEditor(state.detail);
    else if (e.key === "/") { $("#f-q").focus(); e.preventDefault(); }
  });
  connect();
  reload();
}
init();
