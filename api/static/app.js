// Tweet sentiment page: POST /predict, show the result, POST /feedback with the opposite label.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  let last = null; // the prediction shown

  function errorMessage(body, status) {
    if (body && typeof body.message === "string") return body.message;
    const d = body && body.detail;
    if (Array.isArray(d)) return d.map((e) => e.msg).join("; ");
    if (typeof d === "string") return d;
    return "request failed (HTTP " + status + ")";
  }

  async function postJSON(url, payload) {
    const r = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
    let body = null;
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error(errorMessage(body, r.status));
    return body;
  }

  function pct(p) { return (100 * p).toFixed(1) + "%"; }

  function show(p) {
    last = p;
    $("label").textContent = p.label;
    $("p-negative").textContent = pct(p.probabilities.negative);
    $("p-positive").textContent = pct(p.probabilities.positive);
    $("bar-negative").style.width = pct(p.probabilities.negative);
    $("bar-positive").style.width = pct(p.probabilities.positive);
    $("model-name").textContent = p.model_name;
    $("model-version").textContent = p.model_version;
    window.renderExplanation($("why"), p.explanation, p.explanation_method);
    $("result").dataset.predictionId = p.id;
    $("result").dataset.label = p.label;
    $("result").dataset.modelVersion = p.model_version;
    $("lineage").href = "/predictions/" + encodeURIComponent(p.id) + "/lineage";
    $("feedback-status").textContent = "";
    $("wrong").disabled = false;
    $("result").hidden = false;
  }

  async function predict() {
    $("error").textContent = "";
    $("predict").disabled = true;
    try {
      show(await postJSON("/predict?explain=true", { text: $("text").value }));
    } catch (e) {
      $("error").textContent = e.message;
    } finally {
      $("predict").disabled = false;
    }
  }

  async function wrong() {
    if (!last) return;
    const corrected = last.label === "positive" ? "negative" : "positive";
    $("wrong").disabled = true;
    $("feedback-status").textContent = "Sending…";
    try {
      const fb = await postJSON("/feedback", { prediction_id: last.id, correct_label: corrected, feedback_token: last.feedback_token });
      $("feedback-status").textContent = "Thanks! Recorded as " + fb.correct_label + " (feedback #" + fb.id + ").";
    } catch (e) {
      $("feedback-status").textContent = "Could not send feedback: " + e.message;
      $("wrong").disabled = false;
    }
  }

  // "champion: tfidf_lr v2; challenger: transformer training, 35% (ETA 40 min)" (GET /model, every 30 s)
  async function modelsLine() {
    try {
      const r = await fetch("/model", { headers: { Accept: "application/json" } });
      if (!r.ok) return;
      const m = await r.json();
      let line = "champion: " + (m.family || "?") + " v" + m.version;
      if (m.challenger && m.challenger.text) line += "; challenger: " + m.challenger.text;
      $("models-line").textContent = line;
    } catch (e) { /* the line stays as it was */ }
  }
  modelsLine();
  setInterval(modelsLine, 30000);

  $("predict").addEventListener("click", predict);
  $("wrong").addEventListener("click", wrong);
  $("text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) predict();
  });
})();
