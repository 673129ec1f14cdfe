// Review queue: GET /review/queue, POST /review/{item} with the review key from sessionStorage.
// Keys: a = accept, r = reject, n / p = relabel negative / positive, s = skip, u = undo the last decision
// (DELETE /review/decisions/{id}). Texts, comments and explanation tokens are attacker-controlled:
// textContent only.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const STORE = "sentiment-review-key";
  let items = [];
  let current = null;
  let busy = false;
  let waiting = 0; // items left in the queue (reported_waiting + uncertain_waiting), this page's decisions off
  let lastDecision = null; // {id, item}: what undo withdraws

  function plural(n, one, many) { return n + " " + (n === 1 ? one : many); }

  function showLeft() { $("left").textContent = plural(waiting, "item", "items") + " left"; $("left").dataset.count = String(waiting); }

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
    showLeft();
    $("item").hidden = !current;
    $("empty").hidden = !!current;
    if (!current) return;
    $("item").dataset.itemId = current.id;
    $("item").dataset.kind = current.kind;
    $("item-kind").textContent = current.kind === "reported"
      ? plural(current.report_count || 0, "report", "reports") + " by " + plural(current.identities, "identity", "identities")
        + " (" + plural(current.keyed_identities || 0, "API key agrees", "API keys agree")
        + (current.quarantined_reports ? ", " + current.quarantined_reports + " quarantined by a burst" : "") + ")"
      : "uncertain prediction";
    $("item-version").textContent = current.model_version;
    $("item-text").textContent = current.text;
    $("item-predicted").textContent = current.predicted_label;
    $("item-confidence").textContent = current.confidence === null ? "?" : (100 * current.confidence).toFixed(1) + "%";
    $("item-reports").textContent = current.reports.negative + " negative, " + current.reports.positive + " positive";
    $("item-proposed").textContent = current.proposed_label;
    window.renderExplanation($("item-why"), current.explanation, current.explanation_method
      ? current.explanation_method + ", serving model v" + current.explained_by_version : null);
    const ul = $("item-comments");
    ul.replaceChildren();
    for (const c of current.comments || []) {
      const li = document.createElement("li");
      li.className = "comment";
      li.textContent = c.comment + " (" + c.reporter + ", says " + c.label + ")";
      ul.appendChild(li);
    }
    ul.hidden = !(current.comments && current.comments.length);
  }

  async function load() {
    $("error").textContent = "";
    try {
      const q = await call("GET", "/review/queue?limit=50");
      $("key-form").hidden = true;
      $("review").hidden = false;
      $("reviewer").textContent = q.reviewer;
      items = q.items;
      waiting = (q.reported_waiting || 0) + (q.uncertain_waiting || 0);
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
      lastDecision = { id: r.id, item: item.id };
      $("undo").disabled = false;
      waiting = Math.max(0, waiting - 1);
      if (items.length) show(); else await load();
    } catch (e) {
      $("error").textContent = e.message;
    } finally {
      busy = false;
    }
  }

  async function undo() {
    if (!lastDecision || busy) return;
    busy = true;
    const d = lastDecision;
    try {
      await call("DELETE", "/review/decisions/" + encodeURIComponent(d.id));
      lastDecision = null;
      $("undo").disabled = true;
      $("status").textContent = "Undone: review #" + d.id + " (the item is back in the queue)";
      await load(); // the item returns with the queue's order and counts
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
  $("undo").addEventListener("click", undo);
  document.addEventListener("keydown", (ev) => {
    if ($("review").hidden || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "TEXTAREA")) return;
    const k = ev.key.toLowerCase();
    if (k === "a") decide("accept");
    else if (k === "r") decide("reject");
    else if (k === "n") decide("relabel", "negative");
    else if (k === "p") decide("relabel", "positive");
    else if (k === "s") skip();
    else if (k === "u") undo();
    else return;
    ev.preventDefault();
  });

  if (key()) load(); else askKey();
})();
