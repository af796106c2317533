/*
 * Defect-GLM demo page behaviour.
 *
 * One wafer image starts one conversation thread on the server (thread API, id made here);
 * follow-up questions go to the same thread, whose memory lives on the server.
 * The page draws findings.grid (the die grid as the server read it) on a canvas, lists
 * findings.patterns and findings.measured, and shows every API error as a readable message.
 * No framework, no build step: plain DOM and fetch().
 */
"use strict";

(function () {
  const I18N = window.DEFECT_GLM_I18N;
  const LANG_KEY = "defect-glm.lang";
  const COLORS = { good: "#8fbf9f", fail: "#d1242f", off: "#eef1f4" };
  const MAP_CSS_PX = 220;
  const UNKNOWN_CLASS = "Unknown"; // findings.class when the model's answer named no readable pattern set

  const state = {
    lang: initialLanguage(),
    threadId: null, // set once the first message of a thread got an answer
    pendingThreadId: null,
    findings: null,
    model: "",
    messages: [], // {role: "user"|"assistant", text, meta}
    samples: [],
    busy: false,
  };

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ language
  function initialLanguage() {
    try {
      const saved = window.localStorage.getItem(LANG_KEY);
      if (saved === "en" || saved === "zh") return saved;
    } catch (e) {
      /* storage may be disabled; fall through */
    }
    return (navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";
  }

  function t(key, vars) {
    const table = I18N[state.lang] || I18N.en;
    let text = key in table ? table[key] : I18N.en[key] || key;
    if (vars) {
      for (const [name, value] of Object.entries(vars)) text = text.split("{" + name + "}").join(String(value));
    }
    return text;
  }

  function applyLanguage() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    document.title = t("page_title");
    document.querySelectorAll("[data-i18n]").forEach((el) => (el.textContent = t(el.dataset.i18n)));
    document.querySelectorAll("[data-i18n-title]").forEach((el) => (el.title = t(el.dataset.i18nTitle)));
    document.querySelectorAll("[data-i18n-aria]").forEach((el) => el.setAttribute("aria-label", t(el.dataset.i18nAria)));
    const toggle = $("lang-toggle");
    toggle.textContent = t("lang_button");
    toggle.setAttribute("aria-label", t("lang_button_label"));
    const question = $("question");
    const defaults = [I18N.en.default_question, I18N.zh.default_question];
    if (!question.value || defaults.includes(question.value)) question.value = t("default_question");
    question.placeholder = t("default_question");
    updateFollowupState();
    renderSamples();
    renderFindings();
    renderChat();
    if (state.lastError) showError(state.lastError);
  }

  function toggleLanguage() {
    state.lang = state.lang === "en" ? "zh" : "en";
    try {
      window.localStorage.setItem(LANG_KEY, state.lang);
    } catch (e) {
      /* not fatal */
    }
    applyLanguage();
  }

  // ------------------------------------------------------------------ errors
  // Maps an API error code (or HTTP status) to a message + hint pair from the i18n table.
  const ERROR_KINDS = {
    not_a_wafer_map: "not_a_wafer_map",
    image_too_large: "image_too_large",
    image_too_many_pixels: "image_too_large",
    request_too_large: "image_too_large",
    unsupported_image_format: "bad_image",
    unreadable_image: "bad_image",
    invalid_base64: "bad_image",
    invalid_json: "bad_request",
    invalid_field: "bad_request",
    missing_text: "bad_request",
    text_too_long: "bad_request",
    invalid_thread_id: "bad_request",
    queue_full: "busy",
    not_ready: "not_ready",
    reload_failed: "not_ready",
    reload_in_progress: "not_ready",
    model_error: "model",
    internal_error: "model",
    thread_not_found: "not_found",
    route_not_found: "not_found",
    method_not_allowed: "not_found",
    model_not_found: "not_found",
  };

  function kindForStatus(status) {
    if (status === 413) return "image_too_large";
    if (status === 415) return "bad_image";
    if (status === 422) return "not_a_wafer_map";
    if (status === 429) return "busy";
    if (status === 503) return "not_ready";
    if (status === 404 || status === 405) return "not_found";
    if (status >= 500) return "model";
    return "bad_request";
  }

  class ApiError extends Error {
    constructor(info) {
      super(info.message || info.kind);
      this.info = info; // {kind, status, type, code, message, retryAfter, vars}
    }
  }

  function showError(info) {
    state.lastError = info;
    $("error-title").textContent = t("err_" + info.kind, info.vars || {});
    const detail = [];
    if (info.message) detail.push(info.message);
    if (info.code) detail.push("(" + [info.status, info.code].filter(Boolean).join(" ") + ")");
    $("error-message").textContent = detail.join(" ");
    const hintKey = "hint_" + (info.hint || info.kind);
    const hint = I18N.en[hintKey] ? t(hintKey, { s: info.retryAfter || 5, ...(info.vars || {}) }) : "";
    $("error-hint").textContent = hint;
    $("error").dataset.code = info.code || info.kind;
    $("error").hidden = false;
    document.body.dataset.state = "error";
  }

  function clearError() {
    state.lastError = null;
    $("error").hidden = true;
    delete $("error").dataset.code;
  }

  // ------------------------------------------------------------------ API
  async function postMessage(threadId, text, file) {
    const form = new FormData();
    form.append("text", text);
    if (file) form.append("image", file, file.name || "wafer.png");
    let response;
    try {
      response = await fetch("/v1/threads/" + encodeURIComponent(threadId) + "/messages", {
        method: "POST",
        body: form,
      });
    } catch (e) {
      throw new ApiError({ kind: "unreachable", message: String(e.message || e) });
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const err = body && body.error ? body.error : null;
      const retryAfter = parseFloat(response.headers.get("Retry-After") || "") || null;
      if (!err) {
        throw new ApiError({ kind: "bad_response", status: response.status, vars: { status: response.status },
          message: response.statusText, retryAfter });
      }
      throw new ApiError({
        kind: ERROR_KINDS[err.code] || kindForStatus(response.status),
        status: response.status,
        type: err.type,
        code: err.code,
        message: err.message,
        retryAfter,
      });
    }
    if (!body || typeof body.answer !== "string") {
      throw new ApiError({ kind: "bad_response", status: response.status, vars: { status: response.status } });
    }
    return body;
  }

  // Polls /v1/status until the model is loaded (the page can open while the demo is still loading it).
  async function loadStatus() {
    const badge = $("model-badge");
    let ready = false;
    try {
      const response = await fetch("/v1/status");
      const status = await response.json();
      if (!response.ok) throw new Error("status " + response.status);
      ready = Boolean(status.ready);
      state.model = status.model ? status.model + (status.model_version ? " " + status.model_version : "") : "";
      badge.textContent = ready ? state.model : [state.model, t("model_loading")].filter(Boolean).join(" · ");
      badge.dataset.ready = String(ready);
    } catch (e) {
      badge.textContent = t("model_unreachable");
      badge.dataset.ready = "false";
    }
    if (!ready) window.setTimeout(loadStatus, 2000);
  }

  // ------------------------------------------------------------------ conversation
  function newThreadId() {
    const bytes = new Uint8Array(12);
    (window.crypto || window.msCrypto).getRandomValues(bytes);
    return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function setBusy(busy) {
    state.busy = busy;
    $("busy").hidden = !busy;
    document.body.dataset.state = busy ? "busy" : state.lastError ? "error" : state.threadId ? "ready" : "idle";
    $("drop-zone").classList.toggle("disabled", busy);
    $("file-input").disabled = busy;
    document.querySelectorAll(".sample").forEach((b) => (b.disabled = busy));
    updateFollowupState();
  }

  function updateFollowupState() {
    const enabled = Boolean(state.threadId) && !state.busy;
    $("followup-input").disabled = !enabled;
    $("send").disabled = !enabled;
    $("new-thread").disabled = !state.threadId || state.busy;
    $("followup-input").placeholder = state.threadId ? t("followup_placeholder") : t("followup_disabled");
  }

  async function analyse(file) {
    if (state.busy) return;
    clearError();
    if (!file.size) return showError({ kind: "empty_file", hint: "pick_image" });
    if (file.type && !file.type.startsWith("image/")) {
      return showError({ kind: "not_image_file", hint: "pick_image", vars: { name: file.name } });
    }
    const question = $("question").value.trim() || t("default_question");
    // A new image starts a new conversation.
    state.threadId = null;
    delete document.body.dataset.thread;
    state.findings = null;
    state.messages = [{ role: "user", text: question, attachment: file.name || "wafer.png" }];
    showPreview(file);
    renderFindings();
    renderChat();
    const threadId = newThreadId();
    setBusy(true);
    try {
      const reply = await postMessage(threadId, question, file);
      state.threadId = reply.thread_id || threadId;
      receive(reply);
    } catch (e) {
      state.messages = [];
      renderChat();
      handleFailure(e);
    } finally {
      setBusy(false);
    }
  }

  async function followUp(text) {
    if (state.busy || !state.threadId) return;
    clearError();
    if (!text) return showError({ kind: "empty_question", hint: "bad_request" });
    state.messages.push({ role: "user", text });
    renderChat();
    $("followup-input").value = "";
    setBusy(true);
    try {
      receive(await postMessage(state.threadId, text, null));
    } catch (e) {
      handleFailure(e);
    } finally {
      setBusy(false);
      $("followup-input").focus();
    }
  }

  function receive(reply) {
    if (reply.findings) state.findings = reply.findings;
    document.body.dataset.thread = state.threadId; // the thread's id, for support and tests
    state.messages.push({
      role: "assistant",
      text: reply.answer,
      meta: { model: reply.model, ms: Math.round(reply.latency_ms) },
    });
    renderFindings();
    renderChat();
  }

  function handleFailure(e) {
    if (e instanceof ApiError) return showError(e.info);
    showError({ kind: "bad_response", vars: { status: "?" }, message: String(e && e.message ? e.message : e) });
  }

  function resetThread() {
    state.threadId = null;
    delete document.body.dataset.thread;
    state.findings = null;
    state.messages = [];
    clearError();
    $("preview").hidden = true;
    $("preview").removeAttribute("src");
    renderFindings();
    renderChat();
    updateFollowupState();
    document.body.dataset.state = "idle";
  }

  // ------------------------------------------------------------------ rendering
  function showPreview(file) {
    const img = $("preview");
    if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
    const url = URL.createObjectURL(file);
    img.dataset.url = url;
    img.src = url;
    img.alt = file.name || "";
    img.hidden = false;
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function renderChat() {
    const log = $("chat-log");
    log.replaceChildren();
    for (const m of state.messages) {
      const bubble = el("div", { class: "msg " + m.role });
      bubble.appendChild(el("div", { class: "who" }, m.role === "user" ? t("you") : t("assistant")));
      if (m.attachment) bubble.appendChild(el("div", { class: "attachment" }, t("image_attached", { name: m.attachment })));
      bubble.appendChild(el("div", { class: "text" }, m.text));
      if (m.meta) bubble.appendChild(el("div", { class: "meta" }, t("reply_meta", m.meta)));
      log.appendChild(bubble);
    }
    log.scrollTop = log.scrollHeight;
  }

  function zoneName(zone) {
    return zone ? t("zone_" + zone) : t("none");
  }

  function sectorName(sector) {
    return sector ? t("sector_" + sector) : t("none");
  }

  function pct(x) {
    return (100 * x).toFixed(1) + "%";
  }

  function renderFindings() {
    const f = state.findings;
    $("findings").hidden = !f;
    $("findings-empty").hidden = Boolean(f);
    drawGrid(f ? f.grid : null, f ? f.measured : null);
    if (!f) return;
    const chips = $("patterns");
    chips.replaceChildren();
    const names = (f.pattern_names && f.pattern_names[state.lang]) || f.patterns;
    if (!f.patterns.length) {
      const unknown = f.class === UNKNOWN_CLASS;
      chips.appendChild(el("span", { class: unknown ? "chip unknown" : "chip normal" },
        t(unknown ? "unknown_patterns" : "no_patterns")));
    }
    f.patterns.forEach((key, i) => chips.appendChild(el("span", { class: "chip", "data-pattern": key }, names[i] || key)));
    const caveats = $("caveats");
    caveats.replaceChildren();
    (f.caveats || []).forEach((c) => caveats.appendChild(
      el("p", { class: "caveat", "data-code": c.code }, (c.text && (c.text[state.lang] || c.text.en)) || c.code)));

    const m = f.measured || {};
    const clusters = m.clusters || {};
    const largest = clusters.largest;
    const rows = [
      ["f_class", f.class],
      ["f_grid", m.rows + " × " + m.cols],
      ["f_dies", m.dies],
      ["f_failing", m.failing],
      ["f_yield", typeof m.yield === "number" ? m.yield.toFixed(1) + "%" : m.yield],
      ["f_dominant_zone", zoneName(m.dominant_zone)],
      ["f_dominant_sectors", (m.dominant_sectors || []).map(sectorName).join(", ") || (m.failing ? t("spread") : t("none"))],
      ["f_clusters", clusters.count],
      ["f_largest", largest ? t("largest_fmt", { size: largest.size, zone: zoneName(largest.zone),
        sector: sectorName(largest.sector) }) : t("none")],
    ];
    const body = $("measured").tBodies[0];
    body.replaceChildren();
    for (const [key, value] of rows) {
      const tr = el("tr", { "data-fact": key.slice(2) });
      tr.appendChild(el("th", { scope: "row" }, t(key)));
      tr.appendChild(el("td", {}, value === undefined || value === null ? "—" : String(value)));
      body.appendChild(tr);
    }

    const zones = m.zones || {};
    const head = $("zones").tHead;
    head.replaceChildren();
    const hr = el("tr");
    ["z_zone", "z_dies", "z_failing", "z_rate"].forEach((k) => hr.appendChild(el("th", { scope: "col" }, t(k))));
    head.appendChild(hr);
    const zbody = $("zones").tBodies[0];
    zbody.replaceChildren();
    for (const [zone, z] of Object.entries(zones)) {
      const tr = el("tr");
      tr.appendChild(el("th", { scope: "row" }, zoneName(zone)));
      tr.appendChild(el("td", {}, String(z.dies)));
      tr.appendChild(el("td", {}, String(z.failing)));
      tr.appendChild(el("td", {}, pct(z.fail_rate)));
      zbody.appendChild(tr);
    }
  }

  function drawGrid(grid, measured) {
    const canvas = $("map-canvas");
    const ratio = window.devicePixelRatio || 1;
    canvas.style.width = MAP_CSS_PX + "px";
    canvas.style.height = MAP_CSS_PX + "px";
    canvas.width = Math.round(MAP_CSS_PX * ratio);
    canvas.height = Math.round(MAP_CSS_PX * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, MAP_CSS_PX, MAP_CSS_PX);
    canvas.dataset.failing = "0";
    if (!Array.isArray(grid) || !grid.length || !Array.isArray(grid[0])) {
      canvas.setAttribute("aria-label", "");
      return;
    }
    const rows = grid.length;
    const cols = Math.max(...grid.map((r) => r.length));
    const cell = MAP_CSS_PX / Math.max(rows, cols);
    const gap = cell >= 5 ? 0.6 : 0;
    const x0 = (MAP_CSS_PX - cell * cols) / 2;
    const y0 = (MAP_CSS_PX - cell * rows) / 2;
    let failing = 0;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < grid[r].length; c++) {
        const code = grid[r][c];
        if (code === 0) continue;
        if (code === 2) failing++;
        ctx.fillStyle = code === 2 ? COLORS.fail : COLORS.good;
        ctx.fillRect(x0 + c * cell, y0 + r * cell, cell - gap, cell - gap);
      }
    }
    canvas.dataset.failing = String(failing);
    const m = measured || {};
    canvas.setAttribute("aria-label", t("map_aria", { rows, cols, dies: m.dies ?? "?", failing }));
  }

  // ------------------------------------------------------------------ samples
  async function loadSamples() {
    try {
      const response = await fetch("/static/samples/samples.json");
      if (!response.ok) throw new Error("HTTP " + response.status);
      const manifest = await response.json();
      state.samples = Array.isArray(manifest.samples) ? manifest.samples : [];
    } catch (e) {
      state.samples = [];
    }
    renderSamples();
  }

  function renderSamples() {
    const list = $("sample-list");
    list.replaceChildren();
    if (!state.samples.length) {
      list.appendChild(el("span", { class: "muted" }, t("samples_missing")));
      return;
    }
    for (const s of state.samples) {
      const label = (s.names && s.names[state.lang]) || s.class;
      const button = el("button", { type: "button", class: "sample", "data-file": s.file, title: label });
      button.appendChild(el("img", { src: "/static/samples/" + s.file, alt: "" }));
      button.appendChild(el("span", {}, label));
      button.disabled = state.busy;
      button.addEventListener("click", () => useSample(s));
      list.appendChild(button);
    }
  }

  async function useSample(sample) {
    if (state.busy) return;
    try {
      const response = await fetch("/static/samples/" + sample.file);
      if (!response.ok) throw new Error("HTTP " + response.status);
      const blob = await response.blob();
      await analyse(new File([blob], sample.file, { type: blob.type || "image/png" }));
    } catch (e) {
      showError({ kind: "unreachable", message: String(e.message || e) });
    }
  }

  // ------------------------------------------------------------------ wiring
  function wire() {
    const zone = $("drop-zone");
    const input = $("file-input");
    zone.addEventListener("click", () => !state.busy && input.click());
    zone.addEventListener("keydown", (e) => {
      if ((e.key === "Enter" || e.key === " ") && !state.busy) {
        e.preventDefault();
        input.click();
      }
    });
    input.addEventListener("change", () => {
      if (input.files && input.files[0]) analyse(input.files[0]);
      input.value = "";
    });
    ["dragenter", "dragover"].forEach((name) =>
      zone.addEventListener(name, (e) => {
        e.preventDefault();
        zone.classList.add("over");
      })
    );
    ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, () => zone.classList.remove("over")));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (file) analyse(file);
    });
    // A file dropped outside the zone must not navigate away from the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());

    $("followup-form").addEventListener("submit", (e) => {
      e.preventDefault();
      followUp($("followup-input").value.trim());
    });
    $("new-thread").addEventListener("click", resetThread);
    $("lang-toggle").addEventListener("click", toggleLanguage);
    $("error-close").addEventListener("click", () => {
      clearError();
      setBusy(state.busy);
    });
  }

  wire();
  applyLanguage();
  loadStatus();
  loadSamples();
})();
