// Search snippets without raw LaTeX (book/_ext/reading.py). Sphinx builds a result's snippet from
// the text of the page it fetches, where math is still its TeX source (MathJax typesets it only
// in the reader's browser). Before Sphinx reads that text: display equations are left out, and
// inline math becomes plain symbols (\sigma_i → σ_i), or "…" where no plain form is known.
"use strict";
(() => {
  const SYMBOLS = {
    alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ε", varepsilon: "ε", zeta: "ζ",
    eta: "η", theta: "θ", kappa: "κ", lambda: "λ", mu: "μ", nu: "ν", xi: "ξ", pi: "π", rho: "ρ",
    sigma: "σ", tau: "τ", phi: "φ", varphi: "φ", chi: "χ", psi: "ψ", omega: "ω", Gamma: "Γ",
    Delta: "Δ", Theta: "Θ", Lambda: "Λ", Pi: "Π", Sigma: "Σ", Phi: "Φ", Psi: "Ψ", Omega: "Ω",
    top: "ᵀ", intercal: "ᵀ", times: "×", cdot: "·", cdots: "⋯", ldots: "…", dots: "…",
    approx: " ≈ ", sim: " ∼ ", le: " ≤ ", leq: " ≤ ", ge: " ≥ ", geq: " ≥ ", ne: " ≠ ", neq: " ≠ ",
    to: " → ", rightarrow: " → ", mapsto: " ↦ ", in: " ∈ ", infty: "∞", ell: "ℓ", sqrt: "√", sum: "∑", prod: "∏",
    partial: "∂", nabla: "∇", pm: "±", odot: "⊙", otimes: "⊗", circ: "∘", lVert: "‖", rVert: "‖",
    Vert: "‖", lvert: "|", rvert: "|", mid: "|", langle: "⟨", rangle: "⟩", min: "min", max: "max",
    log: "log", exp: "exp", det: "det", tr: "tr", quad: " ", qquad: " ", ",": " ", ";": " ", "!": "",
    left: "", right: "", big: "", Big: "", bigl: "", bigr: "", displaystyle: "",
  };
  // Commands whose argument is the text itself: \mathrm{rank} → rank.
  const WRAPPERS = /\\(?:mathrm|mathbf|mathit|mathcal|mathbb|boldsymbol|operatorname|text|textrm|textbf|bm|hat|tilde|bar|overline)\s*\{([^{}]*)\}/g;

  function plain(tex) {
    let text = tex.trim().replace(/^\\\(|\\\)$/g, "").replace(/^\$|\$$/g, "");
    for (let i = 0; i < 3; i++) text = text.replace(WRAPPERS, "$1");
    text = text.replace(/\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}/g, "$1/$2");
    // A control word eats the spaces after it, as in TeX (\Delta W → ΔW); relations bring their own.
    text = text.replace(/\\([A-Za-z]+)\s*|\\([,;!])/g, (match, word, mark) => {
      const name = word || mark;
      return name in SYMBOLS ? SYMBOLS[name] : match;
    });
    text = text.replace(/\^\{?ᵀ\}?/g, "ᵀ").replace(/[{}]/g, "").replace(/\s+/g, " ").trim();
    return text.includes("\\") ? "…" : text;
  }

  function withoutTex(htmlString) {
    const page = new DOMParser().parseFromString(htmlString, "text/html");
    page.querySelectorAll("div.math").forEach((el) => el.remove());
    page.querySelectorAll("span.math").forEach((el) => el.replaceWith(plain(el.textContent)));
    return page.documentElement.outerHTML;
  }

  function patch() {
    if (typeof Search === "undefined" || Search._withoutTex) return;
    const htmlToText = Search.htmlToText;
    Search.htmlToText = (htmlString, anchor) => htmlToText(withoutTex(htmlString), anchor);
    Search._withoutTex = true;
  }

  patch();
  document.addEventListener("DOMContentLoaded", patch);
  window.spectrallabPlainTex = plain; // for the browser test
})();
