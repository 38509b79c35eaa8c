/* Trace viewer of the sentry-tracing-mw local collector: plain JS, no build step. */
"use strict";

(function () {
  const view = document.getElementById("view");
  const state = { filters: { window: "24h", name: "", status: "", min_duration: "" } };

  // -- helpers ----------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "style") node.setAttribute("style", value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  async function api(path) {
    const res = await fetch(path, { headers: { Accept: "application/json" } });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.detail || res.status + " " + res.statusText);
    return body;
  }
  function ms(value) {
    if (value === null || value === undefined || isNaN(value)) return "–";
    if (value >= 10000) return (value / 1000).toFixed(1) + " s";
    if (value >= 100) return value.toFixed(0) + " ms";
    return value.toFixed(2) + " ms";
  }
  function pct(value) { return (value * 100).toFixed(1) + "%"; }
  function when(ts) { return ts ? new Date(ts * 1000).toLocaleString() : "–"; }
  function failed(status) { return !["ok", "cancelled", "unknown", "unset"].includes(status || "unknown"); }
  function statusBadge(status) {
    return el("span", { class: "badge " + (failed(status) ? "bad" : "ok"), text: status || "unknown" });
  }
  function opClass(op) {
    op = op || "";
    if (op.startsWith("http") || op.startsWith("rpc") || op.startsWith("grpc")) return "op-http";
    if (op.startsWith("db") || op.startsWith("cache") || op.startsWith("redis")) return "op-db";
    if (op.startsWith("template") || op.startsWith("view") || op.startsWith("ui")) return "op-tpl";
    if (op.startsWith("function") || op.startsWith("task") || op.startsWith("queue")) return "op-fn";
    return "op-other";
  }
  function go(hash) { if (location.hash !== hash) location.hash = hash; else route(); }
  function setNav(which) {
    for (const id of ["nav-list", "nav-traces"]) {
      document.getElementById(id).classList.toggle("active", id === which);
    }
  }
  function showError(err) {
    view.replaceChildren(el("div", { class: "notice", id: "error", text: "Error: " + err.message }));
  }
  async function refreshStats() {
    try {
      const s = await api("/api/ui/stats");
      const c = s.counts;
      document.getElementById("stats").textContent =
        `${c.units} transactions · ${c.spans} spans · ${c.errors} errors · ${c.envelopes} envelopes`;
    } catch (e) { /* stats are decoration */ }
  }

  // -- transaction list ---------------------------------------------------------------
  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
    return q.toString();
  }
  async function renderList() {
    setNav("nav-list");
    const f = state.filters;
    const form = el("form", { class: "filters card", id: "filters" },
      el("label", {}, "Time window", el("select", { id: "f-window" },
        ...[["5m", "last 5 minutes"], ["15m", "last 15 minutes"], ["1h", "last hour"],
          ["24h", "last 24 hours"], ["7d", "last 7 days"], ["all", "all time"]].map(([v, t]) =>
          el("option", { value: v, selected: f.window === v, text: t })))),
      el("label", {}, "Transaction name", el("input", { id: "f-name", type: "search", value: f.name, placeholder: "contains…" })),
      el("label", {}, "Status", el("select", { id: "f-status" },
        ...[["", "any"], ["failed", "failed"], ["not_failed", "not failed"], ["ok", "ok"],
          ["internal_error", "internal_error"], ["not_found", "not_found"],
          ["invalid_argument", "invalid_argument"], ["unauthenticated", "unauthenticated"],
          ["permission_denied", "permission_denied"], ["deadline_exceeded", "deadline_exceeded"],
          ["cancelled", "cancelled"], ["error", "error"]].map(([v, t]) =>
          el("option", { value: v, selected: f.status === v, text: t })))),
      el("label", {}, "Min duration (ms)", el("input", { id: "f-min", type: "number", min: "0", step: "any", value: f.min_duration })),
      el("button", { type: "submit", id: "f-apply" }, "Apply"));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      state.filters = {
        window: form.querySelector("#f-window").value,
        name: form.querySelector("#f-name").value.trim(),
        status: form.querySelector("#f-status").value,
        min_duration: form.querySelector("#f-min").value,
      };
      renderList();
    });
    form.querySelector("#f-window").addEventListener("change", () => form.requestSubmit());
    form.querySelector("#f-status").addEventListener("change", () => form.requestSubmit());
    const data = await api("/api/ui/summary?" + query(f));
    const head = el("tr", {}, ...[["Transaction"], ["Op"], ["Services"], ["Count", 1], ["Extrapolated", 1],
      ["TPM", 1], ["Avg", 1], ["P75", 1], ["P95", 1], ["Failure rate", 1]].map(([t, n]) =>
      el("th", { class: n ? "num" : null, text: t })));
    const body = el("tbody", {});
    for (const row of data.rows) {
      body.append(el("tr", { class: "summary-row", "data-name": row.name,
        onclick: () => go("#/name/" + encodeURIComponent(row.name)) },
        el("td", {}, el("a", { href: "#/name/" + encodeURIComponent(row.name), text: row.name })),
        el("td", { class: "mono", text: row.ops.join(", ") }),
        el("td", {}, ...row.services.map((s) => el("span", { class: "badge service", text: s }))),
        el("td", { class: "num count", text: row.count }),
        el("td", { class: "num extrapolated", title: "sum of 1 / sample_rate", text: Number(row.extrapolated_count.toFixed(1)) }),
        el("td", { class: "num tpm", text: row.tpm >= 1 ? row.tpm.toFixed(2) : row.tpm.toPrecision(2) }),
        el("td", { class: "num", text: ms(row.avg_ms) }),
        el("td", { class: "num", text: ms(row.p75_ms) }),
        el("td", { class: "num", text: ms(row.p95_ms) }),
        el("td", { class: "num failure-rate" + (row.failure_rate > 0 ? " status-bad" : ""), text: pct(row.failure_rate) })));
    }
    const table = data.rows.length
      ? el("table", { class: "grid", id: "summary" }, el("thead", {}, head), body)
      : el("div", { class: "empty card", id: "summary-empty" },
        "No transactions match. Point an app at this collector's DSN: ",
        el("code", { text: location.protocol + "//public@" + location.host + "/1" }));
    view.replaceChildren(el("h1", { text: "Transactions" }),
      el("p", { class: "muted", text: `${data.total} transactions in the window, ${data.rows.length} names` }),
      form, table);
  }

  async function renderName(name) {
    setNav("nav-list");
    const f = state.filters;  // the list's filters still apply (not the name search: exact name here)
    const data = await api("/api/ui/transactions?" + query({ exact_name: name, window: f.window,
      status: f.status, min_duration: f.min_duration }));
    const body = el("tbody", {});
    for (const row of data.rows) {
      body.append(el("tr", { class: "tx-row", "data-id": row.id, onclick: () => go("#/tx/" + row.id) },
        el("td", { text: when(row.end_ts) }),
        el("td", {}, el("a", { class: "mono", href: "#/tx/" + row.id, text: row.id.slice(0, 16) })),
        el("td", {}, el("a", { class: "mono", href: "#/trace/" + row.trace_id, text: row.trace_id,
          onclick: (ev) => ev.stopPropagation() })),
        el("td", {}, el("span", { class: "badge service", text: row.service })),
        el("td", {}, statusBadge(row.status)),
        el("td", { class: "num", text: row.sample_rate ? row.sample_rate : "–" }),
        el("td", { class: "num", text: ms(row.duration_ms) })));
    }
    view.replaceChildren(
      el("p", {}, el("a", { href: "#/", text: "← all transactions" })),
      el("h1", { text: name }),
      el("p", { class: "muted", id: "tx-list-filters", text: `${data.total} transactions (newest first, window ${f.window}` +
        (f.status ? `, status ${f.status}` : "") + (f.min_duration ? `, at least ${f.min_duration} ms` : "") + ")" }),
      el("table", { class: "grid", id: "tx-list" }, el("thead", {}, el("tr", {},
        ...["Time", "Event", "Trace", "Service", "Status", "Sample rate", "Duration"].map((t) =>
          el("th", { class: t === "Duration" || t === "Sample rate" ? "num" : null, text: t })))), body));
  }

  async function renderTraces() {
    setNav("nav-traces");
    const data = await api("/api/ui/traces?limit=50");
    const body = el("tbody", {});
    for (const row of data.rows) {
      body.append(el("tr", { class: "trace-row", onclick: () => go("#/trace/" + row.trace_id) },
        el("td", { text: when(row.received) }),
        el("td", {}, el("a", { class: "mono", href: "#/trace/" + row.trace_id, text: row.trace_id })),
        el("td", { class: "num", text: row.units }),
        el("td", {}, ...(row.services || "").split(",").map((s) => el("span", { class: "badge service", text: s }))),
        el("td", { class: "num", text: row.failed }),
        el("td", { class: "num", text: ms((row.end_ts - row.start_ts) * 1000) })));
    }
    view.replaceChildren(el("h1", { text: "Recent traces" }),
      data.rows.length ? el("table", { class: "grid", id: "traces" }, el("thead", {}, el("tr", {},
        ...["Received", "Trace id", "Transactions", "Services", "Failed", "Duration"].map((t) => el("th", { text: t })))), body)
        : el("div", { class: "empty card", text: "No traces yet." }));
  }

  // -- waterfall ----------------------------------------------------------------------
  function renderWaterfall(data, container, details) {
    const t0 = data.start, t1 = Math.max(data.end, data.start + 1e-6);
    let z0 = t0, z1 = t1;
    const rows = data.rows;
    const gapsByUnit = {};
    for (const g of data.gaps) (gapsByUnit[g.unit_id] = gapsByUnit[g.unit_id] || []).push(g);

    const minimap = el("div", { class: "minimap", id: "minimap", title: "drag to zoom, double-click to reset" });
    const n = rows.length;
    rows.forEach((r, i) => {
      minimap.append(el("div", { class: "mm-bar " + opClass(r.op), style:
        `left:${((r.start - t0) / (t1 - t0)) * 100}%;width:${((r.end - r.start) / (t1 - t0)) * 100}%;` +
        `top:${4 + (n > 1 ? (i / (n - 1)) * 54 : 27)}px` }));
    });
    const windowBox = el("div", { class: "mm-window", id: "mm-window" });
    const selectBox = el("div", { class: "mm-select", style: "display:none" });
    minimap.append(windowBox, selectBox);
    const zoomLabel = el("span", { id: "zoom-label" });
    const resetBtn = el("button", { type: "button", id: "zoom-reset", onclick: () => setZoom(t0, t1) }, "Reset zoom");
    const toolbar = el("div", { class: "toolbar" }, zoomLabel, resetBtn,
      el("span", { style: "margin-left:auto" }, "drag on the minimap to zoom · ",
        el("span", { class: "wf-gap", style: "position:relative;display:inline-block;width:22px;height:10px;top:1px" }),
        " missing instrumentation"));
    const ticks = el("div", { class: "ticks" });
    const axis = el("div", { class: "axis" }, el("div", { style: "padding:2px 8px", text: "span" }), ticks);
    const list = el("div", { id: "waterfall" });
    container.replaceChildren(minimap, toolbar, axis, list);

    let selectedRow = null;
    const rowEls = [];
    const pos = (a, b) => {
      const w = z1 - z0;
      return { left: ((a - z0) / w) * 100, width: Math.max(((b - a) / w) * 100, 0) };
    };
    rows.forEach((r) => {
      const label = el("div", { class: "wf-label", style: `padding-left:${8 + r.depth * 16}px`,
        title: (r.op || "") + " " + (r.description || "") },
        r.is_unit_root && r.unit ? el("span", { class: "badge service", text: r.unit.service }) : null,
        el("span", { class: "op", text: r.is_unit_root && r.unit ? " " + (r.op || "default") : (r.op || "default") }),
        ...r.child_units.map((c) => el("a", { class: "child-link", href: "#/tx/" + c.id,
          "data-child-id": c.id, title: "downstream transaction caused by this span: " + c.service + " " + c.name,
          onclick: (ev) => ev.stopPropagation(), text: "↳ " + c.service })),
        " ",
        el("span", { class: "desc", text: r.is_unit_root && r.unit ? r.unit.name : (r.description || "") }),
        r.orphan ? el("span", { class: "badge orphan", title: "parent span " + (r.parent_span_id || "?") + " not found in this trace",
          text: r.is_unit_root ? "orphan transaction" : "orphan span" }) : null,
        r.synthetic ? el("span", { class: "badge orphan", text: "root not received" }) : null,
        r.errors.length ? el("span", { class: "badge bad", text: "⚠ " + r.errors.length + " error" }) : null,
        null);
      const bar = el("div", { class: "wf-bar " + opClass(r.op) + (r.failed ? " failed" : "") });
      const dur = el("span", { class: "wf-dur", text: ms(r.duration_ms) });
      const track = el("div", { class: "wf-track" }, bar, dur);
      const gapEls = [];
      if (r.is_unit_root) {
        for (const g of gapsByUnit[r.unit_id] || []) {
          const ge = el("div", { class: "wf-gap", title: "missing instrumentation: " + ms(g.duration_ms) + " not covered by any span" });
          track.append(ge);
          gapEls.push([ge, g]);
        }
      }
      const row = el("div", { class: "wf-row" + (r.is_unit_root ? " unit-root" : ""), "data-span-id": r.span_id,
        "data-unit-id": r.unit_id, "data-depth": r.depth }, label, track);
      row.addEventListener("click", () => {
        if (selectedRow) selectedRow.classList.remove("selected");
        selectedRow = row; row.classList.add("selected");
        renderDetails(r, data, details);
      });
      list.append(row);
      rowEls.push({ r, bar, dur, gapEls });
      if (r.is_unit_root) {
        for (const g of gapsByUnit[r.unit_id] || []) {
          const gapTrack = el("div", { class: "wf-track" });
          const gapBar = el("div", { class: "wf-gap" });
          const gapDur = el("span", { class: "wf-dur", text: ms(g.duration_ms) });
          gapTrack.append(gapBar, gapDur);
          list.append(el("div", { class: "wf-row gap-row", "data-gap": "1" },
            el("div", { class: "wf-label", style: `padding-left:${8 + (r.depth + 1) * 16}px`,
              text: "missing instrumentation (no span covers " + ms(g.duration_ms) + ")" }), gapTrack));
          rowEls.push({ r: { start: g.start, end: g.end }, bar: gapBar, dur: gapDur, gapEls: [] });
        }
      }
    });

    function layout() {
      for (const { r, bar, dur, gapEls } of rowEls) {
        const p = pos(r.start, r.end);
        bar.style.left = p.left + "%";
        bar.style.width = p.width + "%";
        const right = p.left + p.width;
        if (right > 85) { dur.style.left = ""; dur.style.right = (100 - p.left + 0.5) + "%"; }
        else { dur.style.right = ""; dur.style.left = (right + 0.5) + "%"; }
        for (const [ge, g] of gapEls) {
          const gp = pos(g.start, g.end);
          ge.style.left = gp.left + "%"; ge.style.width = gp.width + "%";
        }
      }
      windowBox.style.left = ((z0 - t0) / (t1 - t0)) * 100 + "%";
      windowBox.style.width = ((z1 - z0) / (t1 - t0)) * 100 + "%";
      ticks.replaceChildren(...[0, 0.25, 0.5, 0.75, 1].map((f) =>
        el("span", { class: "tick", style: `left:${Math.min(Math.max(f * 100, 3), 96)}%`, text: ms((z0 - t0 + f * (z1 - z0)) * 1000) })));
      const zoomed = z0 > t0 || z1 < t1;
      zoomLabel.textContent = zoomed
        ? `showing ${ms((z0 - t0) * 1000)} – ${ms((z1 - t0) * 1000)} of ${ms((t1 - t0) * 1000)}`
        : `full trace: ${ms((t1 - t0) * 1000)}`;
      resetBtn.disabled = !zoomed;
      container.dataset.zoomed = zoomed ? "1" : "0";
    }
    function setZoom(a, b) {
      z0 = Math.max(t0, Math.min(a, b)); z1 = Math.min(t1, Math.max(a, b));
      if (z1 - z0 < (t1 - t0) / 1000) { z0 = t0; z1 = t1; }
      layout();
    }
    let dragFrom = null;
    const timeAt = (ev) => {
      const rect = minimap.getBoundingClientRect();
      const f = Math.min(Math.max((ev.clientX - rect.left) / rect.width, 0), 1);
      return { f, t: t0 + f * (t1 - t0) };
    };
    minimap.addEventListener("mousedown", (ev) => {
      dragFrom = timeAt(ev); ev.preventDefault();
      selectBox.style.display = "block"; selectBox.style.left = dragFrom.f * 100 + "%"; selectBox.style.width = "0";
    });
    state.onMove = (ev) => {
      if (!dragFrom) return;
      const cur = timeAt(ev);
      selectBox.style.left = Math.min(cur.f, dragFrom.f) * 100 + "%";
      selectBox.style.width = Math.abs(cur.f - dragFrom.f) * 100 + "%";
    };
    state.onUp = (ev) => {
      if (!dragFrom) return;
      const cur = timeAt(ev);
      selectBox.style.display = "none";
      if (Math.abs(cur.f - dragFrom.f) > 0.005) setZoom(dragFrom.t, cur.t);
      dragFrom = null;
    };
    minimap.addEventListener("dblclick", () => setZoom(t0, t1));
    layout();
    return rowEls;
  }

  function kvTable(entries) {
    return el("table", { class: "kv" }, el("tbody", {}, ...entries.filter(([, v]) => v !== undefined && v !== null && v !== "").map(([k, v]) =>
      el("tr", {}, el("th", { text: k }), el("td", {}, v instanceof Node ? v : el("span", { class: "mono", text: typeof v === "object" ? JSON.stringify(v) : String(v) }))))));
  }

  function renderDetails(r, data, panel) {
    const rel = (ts) => ms((ts - data.start) * 1000);
    const parts = [
      el("h3", { id: "details-title", text: (r.op || "default") + (r.description ? " — " + r.description : "") }),
      kvTable([
        ["span id", r.span_id], ["parent span id", r.parent_span_id || "(none: head of the trace)"],
        ["trace id", el("a", { class: "mono", href: "#/trace/" + data.trace_id, text: data.trace_id })],
        ["op", r.op || "default"], ["description", r.description], ["status", statusBadge(r.status)],
        ["start", "+" + rel(r.start)], ["duration", ms(r.duration_ms)],
        ["transaction", r.unit ? el("a", { href: "#/tx/" + r.unit.id, text: r.unit.name + " (" + r.unit.kind + ")" }) : null],
        ["service", r.unit ? r.unit.service : null],
        ["sample rate", r.unit ? r.unit.sample_rate : null],
        ["orphan", r.orphan ? "yes: the parent span is not in this trace" : null],
      ]),
    ];
    if (r.child_units.length) {
      parts.push(el("h4", { text: "Downstream transactions" }),
        el("ul", { id: "details-children" }, ...r.child_units.map((c) => el("li", {},
          el("a", { class: "child-link", href: "#/tx/" + c.id, text: c.service + ": " + c.name }),
          " ", statusBadge(c.status), " ", ms(c.duration_ms)))));
    }
    const tags = Object.entries(r.tags || {});
    parts.push(el("h4", { text: "Tags" }), tags.length ? kvTable(tags) : el("p", { class: "muted", text: "none" }));
    const dataEntries = Object.entries(r.data || {});
    parts.push(el("h4", { text: "Data" }), dataEntries.length ? kvTable(dataEntries) : el("p", { class: "muted", text: "none" }));
    if (r.errors.length) {
      parts.push(el("h4", { text: "Errors" }), ...r.errors.map((e) =>
        el("div", { class: "error-item" }, el("b", { text: e.title }), el("div", { class: "muted mono", text: e.event_id }))));
    }
    panel.replaceChildren(...parts);
    panel.dataset.spanId = r.span_id;
  }

  function traceLayout(data, headerNodes) {
    const wfCard = el("div", { class: "card waterfall-card", id: "waterfall-card" });
    const details = el("aside", { class: "card details", id: "details" },
      el("p", { class: "muted", text: "Click a span to see its details." }));
    const errors = data.errors.length ? el("div", { class: "card", id: "errors", style: "margin-bottom:12px" },
      el("b", { text: `${data.errors.length} error event(s) in this ${headerNodes.kind}` }),
      ...data.errors.map((e) => el("div", { class: "error-item" }, el("b", { text: e.title }),
        el("span", { class: "muted", text: " · span " + (e.span_id || "?") + " · " + (e.transaction_name || "") })))) : null;
    view.replaceChildren(...headerNodes.nodes, errors || "", el("div", { class: "trace-layout" }, wfCard, details));
    if (data.rows.length) renderWaterfall(data, wfCard, details);
    else wfCard.replaceChildren(el("div", { class: "empty", id: "no-transactions",
      text: "No transaction of this trace is stored (not sampled, or not sent yet)." }));
  }

  async function renderTransaction(id) {
    setNav("nav-list");
    const data = await api("/api/ui/transaction/" + encodeURIComponent(id));
    const tx = data.transaction;
    const info = el("div", { class: "header-info" },
      el("span", {}, "service ", el("b", { text: tx.service })),
      el("span", {}, "status ", statusBadge(tx.status)),
      el("span", {}, "duration ", el("b", { text: ms(tx.duration_ms) })),
      el("span", {}, "op ", el("b", { text: tx.op || "default" })),
      el("span", {}, "started ", el("b", { text: when(tx.start_ts) })),
      el("span", {}, "sample rate ", el("b", { text: tx.sample_rate ?? "–" })),
      el("span", {}, "trace ", el("a", { class: "mono", id: "trace-link", href: "#/trace/" + tx.trace_id,
        text: tx.trace_id + " (" + data.trace_units + " transaction" + (data.trace_units === 1 ? "" : "s") + ")" })));
    const upstream = data.parent
      ? el("p", { id: "parent-link" }, "Called by ", el("a", { href: "#/tx/" + data.parent.unit_id,
        text: data.parent.service + ": " + data.parent.name }), " — span ",
        el("code", { text: (data.parent.span.op || "") + " " + (data.parent.span.description || "") }))
      : data.orphan ? el("p", { class: "notice", id: "orphan-notice", text:
        "Orphan: the parent span " + tx.parent_span_id + " is not in any stored transaction of this trace." }) : null;
    const request = data.event.request;
    traceLayout(data, { kind: "transaction", nodes: [
      el("p", {}, el("a", { href: "#/name/" + encodeURIComponent(tx.name), text: "← " + tx.name })),
      el("h1", { id: "tx-title" }, tx.name, " ", el("span", { class: "badge", text: tx.kind })),
      info, upstream || "",
      request ? el("p", { class: "muted mono", text: (request.method || "") + " " + (request.url || "") }) : "",
    ] });
  }

  async function renderTrace(traceId) {
    setNav("nav-traces");
    const data = await api("/api/ui/trace/" + encodeURIComponent(traceId));
    const orphans = data.units.filter((u) => u.orphan);
    const services = [...new Set(data.units.map((u) => u.service))];
    traceLayout(data, { kind: "trace", nodes: [
      el("h1", { id: "trace-title" }, "Trace ", el("span", { class: "mono", text: data.trace_id })),
      el("div", { class: "header-info" },
        el("span", {}, el("b", { text: data.units.length }), " transactions"),
        el("span", {}, "services ", ...services.map((s) => el("span", { class: "badge service", text: s }))),
        el("span", {}, "duration ", el("b", { text: ms(data.duration_ms) })),
        el("span", {}, "errors ", el("b", { text: data.errors.length }))),
      orphans.length ? el("p", { class: "notice", id: "orphan-notice", text:
        `${orphans.length} orphan transaction(s): their parent span is not in this trace (not sampled, lost, or not sent yet).` }) : "",
      el("table", { class: "grid", id: "trace-units", style: "margin-bottom:12px" },
        el("thead", {}, el("tr", {}, ...["Service", "Transaction", "Status", "Duration", ""].map((t) => el("th", { text: t })))),
        el("tbody", {}, ...data.units.map((u) => el("tr", { class: "unit-row", "data-id": u.id, onclick: () => go("#/tx/" + u.id) },
          el("td", {}, el("span", { class: "badge service", text: u.service })),
          el("td", {}, el("a", { href: "#/tx/" + u.id, text: u.name })),
          el("td", {}, statusBadge(u.status)),
          el("td", { class: "num", text: ms(u.duration_ms) }),
          el("td", {}, u.orphan ? el("span", { class: "badge orphan", text: "orphan" }) : "")))))
    ] });
  }

  // -- routing ----------------------------------------------------------------------
  async function route() {
    const hash = location.hash.replace(/^#/, "") || "/";
    const parts = hash.split("/").filter(Boolean);
    try {
      if (parts[0] === "tx" && parts[1]) await renderTransaction(decodeURIComponent(parts[1]));
      else if (parts[0] === "trace" && parts[1]) await renderTrace(decodeURIComponent(parts[1]));
      else if (parts[0] === "name" && parts[1]) await renderName(decodeURIComponent(parts.slice(1).join("/")));
      else if (parts[0] === "traces") await renderTraces();
      else await renderList();
      window.scrollTo(0, 0);
      document.body.dataset.route = parts[0] || "list";
    } catch (err) {
      showError(err);
    }
    refreshStats();
  }
  document.getElementById("trace-search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = document.getElementById("trace-search-input").value.trim().replace(/-/g, "").toLowerCase();
    if (value) go("#/trace/" + encodeURIComponent(value));
  });
  window.addEventListener("mousemove", (ev) => { if (state.onMove) state.onMove(ev); });
  window.addEventListener("mouseup", (ev) => { if (state.onUp) state.onUp(ev); });
  window.addEventListener("hashchange", route);
  route();
})();
