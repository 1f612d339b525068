// ARTE Edge fleet dashboard.
// Contract: the admin key lives only in this tab's sessionStorage and goes to this origin as
// `Authorization: Bearer`; one request (GET /api/v1/dashboard/summary) fills the whole page; server data
// is written with textContent / SVG attributes only, never parsed as HTML. A 401/403 clears the key and
// shows the login form. Charts are inline SVG drawn here (no library, no network).
"use strict";

(function () {
  const KEY = "arte.adminKey";
  const SUMMARY = "/api/v1/dashboard/summary";
  const REFRESH_MS = 30000;
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04",
    "#db2777", "#4b5563", "#65a30d"];

  let data = null;
  let shots = "zero_shot";
  let timer = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, String(v));
    }
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function short(id) { return id ? id.slice(0, 12) + "…" : "—"; }

  function bytes(n) {
    if (n < 1024) return n + " B";
    if (n < 1 << 20) return (n / 1024).toFixed(1) + " KiB";
    if (n < 1 << 30) return (n / (1 << 20)).toFixed(1) + " MiB";
    return (n / (1 << 30)).toFixed(2) + " GiB";
  }

  function when(iso) { return iso ? iso.replace("T", " ").slice(0, 19) + " UTC" : "—"; }

  function ago(iso, nowIso) {
    if (!iso) return "never";
    const s = Math.max(0, (Date.parse(nowIso) - Date.parse(iso)) / 1000);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }

  function pct(x) { return x === null || x === undefined ? "—" : (100 * x).toFixed(1) + "%"; }

  // --- session --------------------------------------------------------------------------------------

  function showLogin(message) {
    stopTimer();
    data = null;
    // forget what was shown: after a logout or a refused key the page holds no fleet data
    for (const node of document.querySelectorAll("#totals, #dash .plot, #dash .legend, #dash .panel > div")) {
      node.replaceChildren();
    }
    $("generated-at").textContent = "";
    delete document.body.dataset.loaded;
    $("dash").hidden = true;
    $("session").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("admin-key").value = "";
    $("admin-key").focus();
  }

  function stopTimer() { if (timer !== null) { clearInterval(timer); timer = null; } }

  async function load(key) {
    let resp;
    try {
      resp = await fetch(SUMMARY, { headers: { Authorization: "Bearer " + key }, cache: "no-store" });
    } catch (err) {
      return fail("The server did not answer: " + err.message);
    }
    if (resp.status === 401 || resp.status === 403) {
      sessionStorage.removeItem(KEY);
      let message = resp.status === 401 ? "That key was not accepted." : "That key is not the admin key.";
      try { message += " (" + (await resp.json()).error.message + ")"; } catch (_) { /* body not JSON */ }
      return showLogin(message);
    }
    if (!resp.ok) return fail("The server answered " + resp.status + ".");
    sessionStorage.setItem(KEY, key);
    data = await resp.json();
    $("login").hidden = true;
    $("session").hidden = false;
    $("dash").hidden = false;
    $("load-error").hidden = true;
    render();
    if (timer === null) timer = setInterval(() => refresh(), REFRESH_MS);
    document.body.dataset.loaded = data.generated_at;
  }

  function fail(message) {
    if (data === null) return showLogin(message);
    $("load-error").textContent = message;
    $("load-error").hidden = false;
  }

  function refresh() {
    const key = sessionStorage.getItem(KEY);
    return key ? load(key) : showLogin("");
  }

  // --- rendering ------------------------------------------------------------------------------------

  function render() {
    $("generated-at").textContent = "as of " + when(data.generated_at);
    renderTotals();
    renderReportsChart();
    renderJobsChart();
    renderAccuracyChart();
    renderTables();
  }

  function renderTotals() {
    const t = data.totals;
    const cards = [
      ["cohorts", "Cohorts", t.cohorts, ""],
      ["devices", "Devices", t.devices, t.devices_active + " active · " + t.devices_revoked + " revoked"],
      ["rounds", "Rounds", t.rounds, t.rounds_open + " open"],
      ["reports", "Reports", t.reports, "per-draft scores, no text"],
      ["jobs", "Jobs", t.jobs, (data.job_states.running || 0) + " running · " + (data.job_states.failed || 0) + " failed"],
      ["datasets", "Datasets", t.datasets, bytes(t.dataset_bytes)],
      ["metrics", "Fine-tunes", t.metrics, data.accuracy.filter((a) => a.kept).length + " kept (shown)"],
    ];
    $("totals").replaceChildren(...cards.map(([id, label, value, note]) =>
      el("div", { class: "card", "data-total": id },
        el("div", { class: "label" }, label),
        el("div", { class: "value" }, value),
        el("div", { class: "note" }, note))));
  }

  function names() {
    const cohort = Object.fromEntries(data.cohorts.map((c) => [c.cohort_id, c.name]));
    const device = Object.fromEntries(data.devices.map((d) => [d.device_id, d.device_name]));
    return { cohort: (id) => cohort[id] || short(id), device: (id) => device[id] || short(id) };
  }

  function empty(plot, text) { plot.replaceChildren(el("p", { class: "empty" }, text)); }

  function yTicks(chart, max, x0, x1, y, fmt) {
    const steps = 4;
    for (let i = 0; i <= steps; i++) {
      const v = (max * i) / steps;
      const yy = y(v);
      chart.append(svg("line", { x1: x0, x2: x1, y1: yy, y2: yy, class: "grid" }));
      chart.append(svg("text", { x: x0 - 6, y: yy + 4, class: "tick", "text-anchor": "end" }, fmt(v)));
    }
  }

  function renderReportsChart() {
    const plot = document.querySelector("#chart-reports .plot");
    const rounds = data.rounds;
    if (!rounds.length) return empty(plot, "No rounds yet.");
    const name = names();
    const W = 560, H = 260, L = 40, R = 10, T = 12, B = 78;
    const max = Math.max(1, ...rounds.map((r) => r.n_reports));
    const top = Math.max(4, Math.ceil(max / 4) * 4);
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const band = (W - L - R) / rounds.length;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Reports per round" });
    yTicks(chart, top, L, W - R, y, (v) => String(Math.round(v)));
    const perCohort = {};
    rounds.forEach((r, i) => {
      const n = (perCohort[r.cohort_id] = (perCohort[r.cohort_id] || 0) + 1);
      const full = name.cohort(r.cohort_id) + " #" + n;
      const label = full.length > 18 ? full.slice(0, 10) + "…" + full.slice(-7) : full;
      const x = L + i * band + band * 0.15;
      const w = Math.max(2, band * 0.7);
      const bar = svg("rect", {
        x, y: y(r.n_reports), width: w, height: y(0) - y(r.n_reports),
        class: "bar" + (r.open_now ? " open" : ""), "data-round": r.round_id, "data-value": r.n_reports,
      });
      bar.append(svg("title", {}, `${full}: ${r.n_reports} reports (${r.open_now ? "open" : "closed"})`));
      chart.append(bar);
      chart.append(svg("text", { x: x + w / 2, y: y(r.n_reports) - 4, class: "val", "text-anchor": "middle" },
        r.n_reports));
      if (rounds.length <= 24) {
        chart.append(svg("text", {
          x: x + w / 2, y: H - B + 14, class: "tick", "text-anchor": "end",
          transform: `rotate(-30 ${x + w / 2} ${H - B + 14})`,
        }, label));
      }
    });
    plot.replaceChildren(chart);
  }

  function renderJobsChart() {
    const plot = document.querySelector("#chart-jobs .plot");
    const legend = document.querySelector("#chart-jobs .legend");
    const kinds = Object.keys(data.jobs_by_kind);
    const STATES = Object.keys(data.job_states);   // every state, in the server's order (JOB_STATES)
    const totals = kinds.map((k) => STATES.reduce((a, s) => a + (data.jobs_by_kind[k][s] || 0), 0));
    legend.replaceChildren(...STATES.map((s) =>
      el("span", { class: "key", "data-state": s },
        el("i", { class: "swatch state-" + s }), `${s} ${data.job_states[s] || 0}`)));
    if (!totals.some((n) => n > 0)) return empty(plot, "No jobs yet.");
    const W = 560, H = 40 + 34 * kinds.length, L = 80, R = 40, T = 10;
    const max = Math.max(1, ...totals);
    const x = (v) => L + (W - L - R) * (v / max);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Jobs by kind and state" });
    kinds.forEach((kind, i) => {
      const yy = T + i * 34;
      chart.append(svg("text", { x: L - 8, y: yy + 18, class: "tick", "text-anchor": "end" }, kind));
      let acc = 0;
      for (const s of STATES) {
        const n = data.jobs_by_kind[kind][s] || 0;
        if (n > 0) {
          const seg = svg("rect", {
            x: x(acc), y: yy + 4, width: x(acc + n) - x(acc), height: 22, class: "state-" + s,
            "data-kind": kind, "data-state": s, "data-value": n,
          });
          seg.append(svg("title", {}, `${kind} ${s}: ${n}`));
          chart.append(seg);
        }
        acc += n;
      }
      chart.append(svg("text", { x: x(acc) + 6, y: yy + 19, class: "val" }, totals[i]));
    });
    plot.replaceChildren(chart);
  }

  function renderAccuracyChart() {
    const plot = document.querySelector("#chart-accuracy .plot");
    const legend = document.querySelector("#chart-accuracy .legend");
    const name = names();
    const points = data.accuracy.filter((a) => a["after_" + shots] !== null || a["before_" + shots] !== null);
    if (!points.length) { legend.replaceChildren(); return empty(plot, "No before/after metrics yet."); }
    const byDevice = new Map();
    for (const p of points) {
      if (!byDevice.has(p.device_id)) byDevice.set(p.device_id, []);
      byDevice.get(p.device_id).push(p);
    }
    const times = points.map((p) => Date.parse(p.received_at));
    let t0 = Math.min(...times), t1 = Math.max(...times);
    if (t1 - t0 < 60000) { t0 -= 1800000; t1 += 1800000; }
    const pad = (t1 - t0) * 0.03;
    t0 -= pad; t1 += pad;
    const W = 1140, H = 280, L = 48, R = 16, T = 12, B = 36;
    const x = (t) => L + (W - L - R) * ((t - t0) / (t1 - t0));
    const y = (v) => T + (H - T - B) * (1 - v);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Accuracy per device over time" });
    yTicks(chart, 1, L, W - R, y, (v) => Math.round(v * 100) + "%");
    for (let i = 0; i <= 4; i++) {
      const t = t0 + ((t1 - t0) * i) / 4;
      const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
      chart.append(svg("text", { x: x(t), y: H - B + 18, class: "tick", "text-anchor": anchor },
        new Date(t).toISOString().slice(5, 16).replace("T", " ")));
    }
    const keys = [];
    [...byDevice.keys()].forEach((deviceId, i) => {
      const color = PALETTE[i % PALETTE.length];
      const series = byDevice.get(deviceId);
      for (const which of ["before", "after"]) {
        const pts = series.filter((p) => p[which + "_" + shots] !== null);
        if (pts.length > 1) {
          chart.append(svg("polyline", {
            points: pts.map((p) => `${x(Date.parse(p.received_at))},${y(p[which + "_" + shots])}`).join(" "),
            class: "line " + which, stroke: color,
          }));
        }
        for (const p of pts) {
          const v = p[which + "_" + shots];
          const dot = svg("circle", {
            cx: x(Date.parse(p.received_at)), cy: y(v), r: which === "after" ? 4.5 : 3.5,
            class: "dot " + which, stroke: color, fill: which === "after" ? color : "#fff",
            "data-device": deviceId, "data-series": which, "data-value": v,
          });
          dot.append(svg("title", {}, `${name.device(deviceId)} ${which}: ${pct(v)} (${when(p.received_at)})` +
            (which === "after" ? (p.kept ? ", kept" : ", discarded") : "")));
          chart.append(dot);
        }
      }
      keys.push(el("span", { class: "key", "data-device": deviceId },
        el("i", { class: "swatch", "data-color": color }), name.device(deviceId)));
    });
    plot.replaceChildren(chart);
    keys.push(el("span", { class: "key" }, el("i", { class: "style-after" }), "after (filled)"));
    keys.push(el("span", { class: "key" }, el("i", { class: "style-before" }), "before (dashed)"));
    legend.replaceChildren(...keys);
    // colors come from data attributes via CSSOM (allowed by the page's CSP, unlike style="" attributes)
    legend.querySelectorAll("i[data-color]").forEach((i) => { i.style.background = i.dataset.color; });
  }

  function table(target, columns, rows, truncated) {   // target: an element id or the element
    const head = el("tr", {}, ...columns.map((c) => el("th", {}, c[0])));
    const body = rows.map((r) => el("tr", {}, ...columns.map((c) => {
      const v = c[1](r);
      return v instanceof Node ? el("td", {}, v) : el("td", {}, v === null || v === undefined ? "—" : v);
    })));
    const parts = [el("table", { "data-rows": rows.length }, el("thead", {}, head), el("tbody", {}, ...body))];
    if (!rows.length) parts.push(el("p", { class: "empty" }, "None yet."));
    if (truncated) parts.push(el("p", { class: "muted" }, `Newest ${data.limit} shown.`));
    (typeof target === "string" ? $(target) : target).replaceChildren(...parts);
  }

  function badge(text, cls) { return el("span", { class: "badge " + cls }, text); }

  function renderTables() {
    const name = names();
    const now = data.generated_at;
    const tr = data.truncated;
    table("table-cohorts", [
      ["Name", (c) => c.name], ["Task", (c) => c.task_name], ["Student", (c) => c.student_model],
      ["Profile class", (c) => c.profile_class], ["k", (c) => c.min_devices],
      ["Active devices", (c) => c.n_devices],
      ["Adapter", (c) => c.adapter_id
        ? el("span", { title: [c.adapter_id, ...c.adapter_lineage, "base teacher"].join(" ← ") },
          [short(c.adapter_id), ...c.adapter_lineage.map(short), "base"].join(" ← "))
        : "base teacher"],
    ], data.cohorts, false);
    renderCampaigns(name);
    table("table-devices", [
      ["Name", (d) => d.device_name], ["Cohort", (d) => name.cohort(d.cohort_id)], ["Profile", (d) => d.profile_id],
      ["Agent", (d) => d.agent_version || "—"],
      ["Last contact", (d) => el("span", { title: when(d.last_seen_at) }, ago(d.last_seen_at, now))],
      ["Reports", (d) => d.n_reports], ["Fine-tunes", (d) => d.n_metrics],
      ["Key", (d) => d.revoked_at ? badge("revoked", "bad") : badge("active", "good")],
    ], [...data.devices].reverse(), tr.devices);
    table("table-rounds", [
      ["Round", (r) => short(r.round_id)], ["Cohort", (r) => name.cohort(r.cohort_id)],
      ["State", (r) => r.open_now ? badge("open", "good") : badge(r.state === "open" ? "expired" : r.state, "")],
      ["Mode", (r) => r.mode], ["Drafts", (r) => r.n_drafts], ["Reports", (r) => r.n_reports],
      ["Created", (r) => when(r.created_at)],
    ], [...data.rounds].reverse(), tr.rounds);
    table("table-jobs", [
      ["Job", (j) => short(j.job_id)], ["Kind", (j) => j.kind], ["Cohort", (j) => name.cohort(j.cohort_id)],
      ["State", (j) => badge(j.state, "state-" + j.state)], ["Attempts", (j) => `${j.attempts}/${j.max_attempts}`],
      ["Progress", (j) => j.progress === null ? "—" : pct(j.progress)], ["Created", (j) => when(j.created_at)],
      ["Error", (j) => j.error ? j.error.slice(0, 120) : "—"],
    ], [...data.jobs].reverse(), tr.jobs);
    table("table-datasets", [
      ["Dataset", (d) => short(d.dataset_id)], ["Cohort", (d) => name.cohort(d.cohort_id)],
      ["Examples", (d) => d.n_examples], ["Size", (d) => bytes(d.size)], ["sha256", (d) => d.sha256.slice(0, 16) + "…"],
      ["Teacher", (d) => d.teacher], ["Created", (d) => when(d.created_at)],
    ], [...data.datasets].reverse(), tr.datasets);
    table("table-accuracy", [
      ["Device", (a) => name.device(a.device_id)], ["Received", (a) => when(a.received_at)],
      ["0-shot", (a) => `${pct(a.before_zero_shot)} → ${pct(a.after_zero_shot)}`],
      ["3-shot", (a) => `${pct(a.before_three_shot)} → ${pct(a.after_three_shot)}`],
      ["Items", (a) => a.n_items], ["Adapter", (a) => a.kept ? badge("kept", "good") : badge("discarded", "bad")],
    ], [...data.accuracy].reverse(), tr.accuracy);
  }

  function renderCampaigns(name) {
    // one table per campaign: each round's lineage and what it measured
    const acc = (a, b) => (a === null && b === null ? "—" : `${pct(a)} → ${pct(b)}`);
    const parts = (data.campaigns || []).slice().reverse().map((c) => {
      const head = el("p", {}, el("strong", {}, `${name.cohort(c.cohort_id)} · `), badge(c.state, "state-" + c.state),
        ` round ${c.round_no}${c.rounds ? "/" + c.rounds : ""}, step ${c.step}; a round closes at `
        + `${c.policy.close_devices} devices` + (c.policy.deadline_s ? ` or after ${c.policy.deadline_s} s` : "")
        + (c.reason ? ` — ${c.reason}` : ""));
      const box = el("div", {});
      table(box, [
        ["Round", (r) => r.round_no], ["Reports", (r) => r.n_reports],
        ["Align", (r) => r.align || "—"], ["Pairs", (r) => r.n_pairs],
        ["DPO held-out acc.", (r) => acc(r.reward_accuracy_before, r.reward_accuracy_after)],
        ["Adapter", (r) => el("span", { title: `${r.adapter_id || "none"} ← ${r.parent_adapter_id || "base"}` },
          `${short(r.adapter_id)} ← ${r.parent_adapter_id ? short(r.parent_adapter_id) : "base"}`)],
        ["Dataset", (r) => r.dataset_id ? `${short(r.dataset_id)} (${r.dataset_examples}, ${bytes(r.dataset_bytes)})` : "—"],
        ["Kept", (r) => `${r.n_kept}/${r.n_metrics}`],
        ["0-shot", (r) => acc(r.before_zero_shot, r.after_zero_shot)],
        ["3-shot", (r) => acc(r.before_three_shot, r.after_three_shot)],
      ], c.history, false);
      return el("div", { class: "campaign", "data-campaign": c.campaign_id }, head, box);
    });
    if (!parts.length) parts.push(el("p", { class: "empty" }, "No campaign yet."));
    $("campaigns").replaceChildren(...parts);
  }

  // --- wiring ---------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("admin-key").value.trim();
      if (key) load(key);
    });
    $("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin("Logged out."); });
    $("refresh").addEventListener("click", () => refresh());
    document.querySelectorAll("#chart-accuracy .toggle button").forEach((b) => b.addEventListener("click", () => {
      shots = b.dataset.shots;
      document.querySelectorAll("#chart-accuracy .toggle button").forEach((o) => o.classList.toggle("on", o === b));
      if (data) renderAccuracyChart();
    }));
    const key = sessionStorage.getItem(KEY);
    if (key) load(key); else showLogin("");
  });
})();
