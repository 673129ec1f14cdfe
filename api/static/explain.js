// "Why this label": render [{token, weight}] as coloured spans (weight > 0 pushed toward positive).
// Tokens are attacker-controlled text: textContent and classes only, never innerHTML.
(function () {
  "use strict";
  window.renderExplanation = function (container, words, method) {
    container.replaceChildren();
    if (!Array.isArray(words) || !words.length) {
      container.hidden = true;
      return;
    }
    const label = document.createElement("span");
    label.className = "why-label";
    label.textContent = "Why: ";
    container.appendChild(label);
    for (const w of words) {
      const span = document.createElement("span");
      const weight = Number(w.weight) || 0;
      span.className = "why-token " + (weight >= 0 ? "toward-positive" : "toward-negative");
      span.textContent = String(w.token) + " " + (weight >= 0 ? "+" : "") + weight.toFixed(3);
      span.dataset.weight = String(weight);
      span.title = weight >= 0 ? "pushed toward positive" : "pushed toward negative";
      container.appendChild(span);
    }
    if (method) {
      const m = document.createElement("span");
      m.className = "meta why-method";
      m.textContent = "(" + method + ")";
      container.appendChild(m);
    }
    container.hidden = false;
  };
})();
