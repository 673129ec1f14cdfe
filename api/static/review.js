// Review queue: GET /review/queue, POST /review/{item} with the review key from sessionStorage.
// Keys: a = accept, r = reject, n / p = relabel negative / positive, s = skip.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const STORE = "sentiment-review-key";
  let items = [];
  let current = null;
  let busy = false;

  function key() { return sessionStorage.getItem(STORE); }

  function errorMessage(body, status) {
    if (body && typeof body.message === "string") return body.message;
    const d = body && body.detail;
    if (Array.isArray(d)) return d.map((e) => e.msg).join("; ");
    if (typeof d === "string") return d;
    return "request failed (HTTP " + status + ")";
  }

  async function call(method, url, payload) {
    const headers = { Authorization: "Bearer " + key() };
    if (payload !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(url, { method, headers, body: payload === undefined ? undefined : JSON.stringify(payload) });
    let body = null;
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    if (r.status === 401 || r.status === 403) {
      sessionStorage.removeItem(STORE);
      askKey();
    }
    if (!r.ok) throw new Error(errorMessage(body, r.status));
    return body;
  }

  function askKey() {
    $("review").hidden = true;
    $("key-form").hidden = false;
    $("key").focus();
  }

  function show() {
    current = items.shift() || null;
    $("remaining").textContent = (current ? items.length + 1 : 0) + " in this batch";
    $("item").hidden = !current;
    $("empty").hidden = !!current;
    if (!current) return;
    $("item").dataset.itemId = current.id;
    $("item").dataset.kind = current.kind;
    $("item-kind").textContent = current.kind === "reported" ? "reported by " + current.identities + " identities"
      : "uncertain prediction";
    $("item-version").textContent = current.model_version;
    $("item-text").textContent = current.text;
    $("item-predicted").textContent = current.predicted_label;
    $("item-confidence").textContent = current.confidence === null ? "?" : (100 * current.confidence).toFixed(1) + "%";
    $("item-reports").textContent = current.reports.negative + " negative, " + current.reports.positive + " positive";
    $("item-proposed").textContent = current.proposed_label;
  }

  async function load() {
    $("error").textContent = "";
    try {
      const q = await call("GET", "/review/queue?limit=50");
      $("key-form").hidden = true;
      $("review").hidden = false;
      $("reviewer").textContent = q.reviewer;
      items = q.items;
      show();
    } catch (e) {
      $("error").textContent = e.message;
    }
  }

  async function decide(decision, label) {
    if (!current || busy) return;
    busy = true;
    const item = current;
    const payload = { decision };
    if (label) payload.label = label;
    else if (decision === "accept") payload.label = item.proposed_label;
    try {
      const r = await call("POST", "/review/" + encodeURIComponent(item.id), payload);
      $("status").textContent = "Recorded: " + r.decision + (r.label ? " as " + r.label : "") + " (review #" + r.id + ")";
      $("status").dataset.lastReview = String(r.id);
      if (items.length) show(); else await load();
    } catch (e) {
      $("error").textContent = e.message;
    } finally {
      busy = false;
    }
  }

  function skip() { if (current) { $("status").textContent = "Skipped"; show(); } }

  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const k = $("key").value.trim();
    if (!k) return;
    sessionStorage.setItem(STORE, k);
    $("key").value = "";
    load();
  });
  $("forget").addEventListener("click", (ev) => { ev.preventDefault(); sessionStorage.removeItem(STORE); askKey(); });
  $("accept").addEventListener("click", () => decide("accept"));
  $("reject").addEventListener("click", () => decide("reject"));
  $("relabel-negative").addEventListener("click", () => decide("relabel", "negative"));
  $("relabel-positive").addEventListener("click", () => decide("relabel", "positive"));
  $("skip").addEventListener("click", skip);
  document.addEventListener("keydown", (ev) => {
    if ($("review").hidden || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "TEXTAREA")) return;
    const k = ev.key.toLowerCase();
    if (k === "a") decide("accept");
    else if (k === "r") decide("reject");
    else if (k === "n") decide("relabel", "negative");
    else if (k === "p") decide("relabel", "positive");
    else if (k === "s") skip();
    else return;
    ev.preventDefault();
  });

  if (key()) load(); else askKey();
})();
