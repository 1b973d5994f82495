/* rtfb operator dashboard: live plots from /api/stream (server-sent events), controls. */
"use strict";
(function () {
  const S = {
    rows: new Map(), events: [], info: {}, status: {}, plots: {}, slicesVersion: -1,
    slicesFetched: 0, redrawPending: false, connected: false, maxIndex: -1,
  };
  window.rtfbDash = S;

  const ROI_COLORS = [[255, 64, 64], [64, 200, 255], [255, 200, 0], [120, 255, 120]];
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ token
  const hashToken = new URLSearchParams(location.hash.slice(1)).get("token");
  if (hashToken) {
    sessionStorage.setItem("rtfb-token", hashToken);
    history.replaceState(null, "", location.pathname);
  }
  $("token").value = sessionStorage.getItem("rtfb-token") || "";
  $("token").addEventListener("change", () =>
    sessionStorage.setItem("rtfb-token", $("token").value.trim()));

  // ------------------------------------------------------------------ plots
  function blockRuns() {
    const runs = [];
    let start = 0;
    (S.info.blocks || []).forEach((b) => {
      const n = Number(b.volumes) || 0;
      runs.push({ from: start, to: start + n - 1, condition: b.condition, feedback: b.feedback });
      start += n;
    });
    return runs;
  }

  function condColor(cond) {
    // the session report's block colours (rtfb.reporting.CONDITION_PALETTE), translucent
    const hex = (S.info.colors || {})[cond];
    if (!hex) return "rgba(160,174,192,0.15)";
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},0.45)`;
  }

  function shadeBlocks(u) {
    const ctx = u.ctx, { top, height } = u.bbox;
    ctx.save();
    for (const r of blockRuns()) {
      const x0 = u.valToPos(r.from - 0.5, "x", true), x1 = u.valToPos(r.to + 0.5, "x", true);
      ctx.fillStyle = condColor(r.condition);
      ctx.fillRect(x0, top, x1 - x0, height);
    }
    ctx.restore();
  }

  function markEvents(u) {
    const ctx = u.ctx, { top, height } = u.bbox;
    ctx.save();
    for (const e of S.events) {
      if (e.index === null || e.index === undefined) continue;
      let color = null;
      if (e.kind === "mark") color = "#2b6cb0";
      else if (["missing", "late", "stale", "rejected"].includes(e.kind)) color = "#c53030";
      else if (e.kind === "feedback_pause" || e.kind === "feedback_resume") color = "#805ad5";
      if (!color) continue;
      const x = u.valToPos(e.index, "x", true);
      ctx.strokeStyle = color;
      ctx.lineWidth = e.kind === "mark" ? 2 : 1;
      ctx.setLineDash(e.kind === "mark" ? [] : [3, 3]);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
      if (e.kind === "mark") {
        ctx.fillStyle = color;
        ctx.font = `${11 * devicePixelRatio}px sans-serif`;
        ctx.fillText(e.message || "", x + 3, top + 12 * devicePixelRatio);
      }
    }
    ctx.restore();
  }

  function xRange() {
    const n = Math.max((S.info.n_expected || 0) - 1, S.maxIndex, 10);
    return [0, n];
  }

  function plotWidth(el) {
    return Math.max(300, (el.parentElement.clientWidth || 800) - 20);
  }

  function makePlot(el, series, axes, scales, extraHooks) {
    const width = plotWidth(el);
    // same left and right axis widths everywhere, so the volume axes line up
    axes = axes.map((a) => Object.assign({ size: a.side === 1 ? 55 : 65 }, a));
    if (!axes.some((a) => a.side === 1)) {
      axes.push({ side: 1, size: 55, label: " ", scale: axes[0].scale || "y", stroke: "transparent",
        values: (u, splits) => splits.map(() => ""), grid: { show: false },
        ticks: { show: false } });
    }
    const opts = {
      width, height: 160, legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      scales: Object.assign({ x: { time: false, range: () => xRange() } }, scales || {}),
      series: [{ label: "volume" }].concat(series),
      axes: [{ size: 32 }].concat(axes),
      hooks: { drawClear: [shadeBlocks], draw: [markEvents].concat(extraHooks || []) },
    };
    const data = [[]].concat(series.map(() => []));
    return new uPlot(opts, data, el);
  }

  function buildPlots() {
    const metric = S.info.metric || "metric";
    const roi = S.info.roi ? ` (${S.info.roi})` : "";
    S.plots.feedback = makePlot($("p-feedback"), [
      { label: metric + roi, stroke: "#2b6cb0", width: 1.5, scale: "m" },
      { label: "baseline", stroke: "#2b6cb0", dash: [6, 4], width: 1, scale: "m" },
      { label: "feedback shown", stroke: "#dd6b20", width: 1.8, scale: "v" },
      { label: "computed, not shown", stroke: "#a0aec0", dash: [2, 3], width: 1, scale: "v" },
      { label: "target", stroke: "#38a169", dash: [6, 4], width: 1, scale: "v",
        show: !!S.info.feedback },
    ], [{ scale: "m", label: metric }, { scale: "v", side: 1, label: "feedback",
      grid: { show: false } }], { v: { range: [0, 1] } });
    const mcol = ["#e53e3e", "#38a169", "#3182ce", "#d69e2e", "#805ad5", "#319795"];
    S.plots.motion = makePlot($("p-motion"), ["tx", "ty", "tz", "rx", "ry", "rz"].map((l, k) => ({
      label: l + (k < 3 ? " mm" : " deg"), stroke: mcol[k], width: 1, scale: k < 3 ? "mm" : "deg",
    })), [{ scale: "mm", label: "mm" }, { scale: "deg", side: 1, label: "deg", grid: { show: false } }]);
    S.plots.fd = makePlot($("p-fd"), [
      { label: "FD mm", stroke: "#2d3748", width: 1.2 },
      { label: "threshold", stroke: "#c53030", dash: [6, 4], width: 1 },
    ], [{ label: "mm" }]);
    S.plots.latency = makePlot($("p-latency"), [
      { label: "latency ms", stroke: "#6b46c1", width: 1.2, scale: "ms" },
    ], [{ label: "ms (log)", scale: "ms" }], { ms: { distr: 3, log: 10 } });
    S.plots.qa = makePlot($("p-qa"), [
      { label: "tSNR brain", stroke: "#2f855a", width: 1.5, scale: "t" },
      { label: "tSNR " + (S.info.roi || "ROI"), stroke: "#d53f8c", width: 1.5, scale: "t" },
      { label: "DVARS", stroke: "#718096", width: 1, scale: "d" },
      { label: "spike", stroke: "#c53030", scale: "d", paths: () => null,
        points: { show: true, size: 9, fill: "#c53030" } },
    ], [{ scale: "t", label: "tSNR" }, { scale: "d", side: 1, label: "DVARS", grid: { show: false } }]);
  }

  function col(getter) {
    const out = new Array(S.maxIndex + 1).fill(null);
    for (const [i, r] of S.rows) {
      const v = getter(r);
      out[i] = (v === undefined || v === null || !isFinite(v)) ? null : v;
    }
    return out;
  }

  function redraw() {
    S.redrawPending = false;
    if (!S.plots.feedback) buildPlots();
    const x = Array.from({ length: S.maxIndex + 1 }, (_, i) => i);
    const metric = S.info.metric;
    const primary = (r) => {
      const src = (r.raw && metric in r.raw) ? r.raw : r.metrics || {};
      return src[metric];
    };
    const target = S.info.target;
    const hidden = (r) => ((r.value === null || r.value === undefined) ? r.fv : null);
    S.plots.feedback.setData([x, col(primary), col((r) => r.baseline), col((r) => r.value),
      col(hidden), col((r) => (S.info.feedback ? (r.target ?? target) : null))]);
    const m = (k) => col((r) => (r.motion ? r.motion[k] : null));
    S.plots.motion.setData([x, m(0), m(1), m(2), m(3), m(4), m(5)]);
    const thr = S.info.fd_threshold;
    S.plots.fd.setData([x, col((r) => r.fd), x.map(() => (thr === undefined ? null : thr))]);
    S.plots.latency.setData([x, col((r) => (r.lat > 0 ? r.lat : null))]);
    const roi = S.info.roi;
    // tSNR of the first few volumes is meaningless (2-4 samples): drawn from the 6th on
    const tsnr = (r, k) => (r.i >= 5 && r.qa && r.qa.tsnr ? r.qa.tsnr[k] : null);
    S.plots.qa.setData([x, col((r) => tsnr(r, "brain")), col((r) => tsnr(r, roi)),
      col((r) => (r.qa ? r.qa.dvars : null)),
      col((r) => (r.qa && r.qa.spike ? r.qa.dvars : null))]);
    S.drawn = S.maxIndex + 1;
    S.redraws = (S.redraws || 0) + 1;
    updateBadges();
  }

  function scheduleRedraw() {
    if (S.redrawPending) return;
    S.redrawPending = true;
    setTimeout(redraw, 120);
  }

  window.addEventListener("resize", () => {
    for (const p of Object.values(S.plots)) {
      p.setSize({ width: plotWidth(p.root), height: 160 });
    }
  });

  // ------------------------------------------------------------------ header, lock, events
  function fmt(v, d) { return (v === null || v === undefined) ? "-" : Number(v).toFixed(d); }

  function setBadge(id, text, cls) {
    const el = $(id);
    el.textContent = text;
    el.className = "badge" + (cls ? " " + cls : "");
  }

  function updateBadges() {
    const st = S.status || {};
    const n = S.info.n_expected ? "/" + S.info.n_expected : "";
    setBadge("b-volume", `volume ${st.index === null || st.index === undefined ? "-" : st.index + 1}${n}` +
      ` (${st.processed || 0} processed)`);
    setBadge("b-block", "block " + (st.block || "-"));
    const lat = st.latency_ms;
    const tr = (S.info.tr || 2) * 1000;
    setBadge("b-latency", `latency ${fmt(lat, 0)} ms`, lat > tr / 2 ? "bad" : lat > 100 ? "warn" : "");
    setBadge("b-value", "feedback " + fmt(st.value, 2) + (st.paused ? " (paused)" : ""),
      st.paused ? "warn" : "");
    const disp = st.display;
    setBadge("b-display", disp === true ? "display connected" :
      disp === false ? "display NOT connected" : "display ?",
      disp === true ? "ok" : disp === false ? "bad" : "");
    let state = S.connected ? (st.done ? "session ended" : (S.info.mode === "review" ? "recorded session" : "live")) : "disconnected";
    if (st.mode === "review") state = "recorded session";
    setBadge("b-state", state, S.connected ? (st.done ? "" : "ok") : "bad");
    $("protocol").textContent = S.info.protocol_name || "session";
    document.title = `rtfb ${S.info.protocol_name || ""} ${st.index === undefined ? "" : "vol " + (st.index + 1)}`;
    const live = st.mode === "live" && !st.done;
    for (const b of document.querySelectorAll("#controls button")) b.disabled = !live;
  }

  function renderLock() {
    const rows = [["session", S.info.session_id], ["protocol", S.info.protocol_name],
      ["source", S.info.source], ["TR (s)", S.info.tr], ["grid", (S.info.shape || []).join(" x ")],
      ["metric", S.info.metric + (S.info.roi ? " in " + S.info.roi : "")],
      ["FD threshold (mm)", S.info.fd_threshold]];
    const lock = S.info.lock || {};
    for (const [k, v] of Object.entries(lock)) {
      rows.push([k, typeof v === "object" ? JSON.stringify(v) : v]);
    }
    $("lock").innerHTML = "";
    for (const [k, v] of rows) {
      if (v === undefined || v === null || v === "") continue;
      const tr = document.createElement("tr");
      const a = document.createElement("td"); a.textContent = k;
      const b = document.createElement("td"); b.textContent = String(v);
      tr.append(a, b); $("lock").append(tr);
    }
  }

  function addEventItem(e) {
    const li = document.createElement("li");
    li.className = e.kind;
    const k = document.createElement("span"); k.className = "k"; k.textContent = e.kind;
    const idx = (e.index === null || e.index === undefined) ? "" : ` vol ${e.index}`;
    const t = e.time ? new Date(e.time * 1000).toLocaleTimeString() : "";
    li.append(k, document.createTextNode(`${idx} ${t} ${e.message || ""}`));
    $("events").prepend(li);
    while ($("events").children.length > 300) $("events").lastChild.remove();
  }

  // ------------------------------------------------------------------ slices
  function b64bytes(s, Type) {
    const bin = atob(s);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return Type ? new Type(out.buffer) : out;
  }

  function drawView(v, withMap, height) {
    const c = document.createElement("canvas");
    c.width = v.w; c.height = v.h;
    c.style.height = Math.floor(height) + "px";
    c.style.width = Math.floor(height * v.w / (v.h * v.aspect)) + "px";
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(v.w, v.h);
    const gray = b64bytes(v.gray), labels = b64bytes(v.labels);
    const map = withMap && v.map ? b64bytes(v.map, Int8Array) : null;
    for (let p = 0; p < v.w * v.h; p++) {
      let r = gray[p], g = gray[p], b = gray[p];
      if (map) {
        const m = map[p];
        if (m > 40) { r = 255; g = Math.min(255, 60 + 3 * m); b = 0; }
        else if (m < -40) { r = 0; g = Math.min(255, 60 - 3 * m); b = 255; }
      } else if (labels[p]) {
        const rc = ROI_COLORS[(labels[p] - 1) % ROI_COLORS.length];
        r = 0.5 * r + 0.5 * rc[0]; g = 0.5 * g + 0.5 * rc[1]; b = 0.5 * b + 0.5 * rc[2];
      }
      img.data[4 * p] = r; img.data[4 * p + 1] = g; img.data[4 * p + 2] = b; img.data[4 * p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return c;
  }

  async function fetchSlices() {
    S.slicesFetched = Date.now();
    try {
      const resp = await fetch("/api/slices", { cache: "no-store" });
      const d = await resp.json();
      S.slices = d;
      if (!d.n) return;
      const mean = $("slices-mean"), mapBox = $("slices-map");
      mean.innerHTML = ""; mapBox.innerHTML = "";
      const views = ["sagittal", "coronal", "axial"];
      const widthPerHeight = views.reduce((a, k) => a + d.views[k].w / (d.views[k].h * d.views[k].aspect), 0);
      const height = Math.min(140, ((mean.clientWidth || 360) - 12) / widthPerHeight);
      for (const view of views) {
        mean.append(drawView(d.views[view], false, height));
        if (d.map) mapBox.append(drawView(d.views[view], true, height));
      }
      $("slices-note").textContent = `mean of ${d.n} volumes; ROIs: ${d.rois.join(", ") || "none"}` +
        ` (cut through ${d.centre_roi || "the centre"})`;
      $("map-title").textContent = d.map
        ? `${d.map.name} ${d.map.kind} (${d.map.condition}, volume ${d.map.volume}; |max| ${fmt(d.map.vmax, 3)})`
        : "Change map (none yet)";
    } catch (err) {
      $("slices-note").textContent = "slices unavailable: " + err;
    }
  }

  function maybeSlices(force) {
    const age = Date.now() - S.slicesFetched;
    if (force || age > 10000) fetchSlices();
  }
  setInterval(() => { if (S.connected && !(S.status || {}).done) maybeSlices(false); }, 5000);

  // ------------------------------------------------------------------ stream
  function applyRow(row) {
    S.rows.set(row.i, row);
    if (row.i > S.maxIndex) S.maxIndex = row.i;
  }

  function apply(msg) {
    if (msg.type === "snapshot") {
      S.rows.clear(); S.maxIndex = -1; S.events = [];
      $("events").innerHTML = "";
      S.info = Object.assign({}, msg.info, { mode: msg.status.mode });
      msg.rows.forEach(applyRow);
      msg.events.forEach((e) => { S.events.push(e); addEventItem(e); });
      S.status = msg.status;
      for (const p of Object.values(S.plots)) p.destroy();
      S.plots = {};
      renderLock();
      maybeSlices(true);
      S.slicesVersion = msg.slices;
    } else if (msg.type === "row") {
      applyRow(msg.row);
      if (msg.status) S.status = msg.status;
    } else if (msg.type === "event") {
      S.events.push(msg.event); addEventItem(msg.event);
    } else if (msg.type === "status") {
      S.status = msg.status;
    } else if (msg.type === "info") {
      const rebuild = !S.info.blocks && msg.info.blocks;
      S.info = Object.assign({}, msg.info, { mode: S.info.mode });
      renderLock();
      if (rebuild) { for (const p of Object.values(S.plots)) p.destroy(); S.plots = {}; }
    } else if (msg.type === "slices") {
      if (msg.version !== S.slicesVersion) { S.slicesVersion = msg.version; maybeSlices(true); }
    }
    S.received = (S.received || 0) + 1;
    scheduleRedraw();
  }

  function connect() {
    const es = new EventSource("/api/stream");
    es.onopen = () => { S.connected = true; updateBadges(); };
    es.onmessage = (e) => apply(JSON.parse(e.data));
    es.addEventListener("end", () => {
      S.status = Object.assign({}, S.status, { done: true });
      es.close(); updateBadges(); maybeSlices(true);
    });
    es.onerror = () => { S.connected = false; updateBadges(); };
    S.source = es;
  }

  // ------------------------------------------------------------------ controls
  async function send(kind, body) {
    const token = $("token").value.trim();
    const msg = $("control-msg");
    try {
      const resp = await fetch("/api/" + kind, {
        method: "POST", headers: { "Content-Type": "application/json",
          Authorization: "Bearer " + token }, body: JSON.stringify(body || {}),
      });
      const d = await resp.json();
      msg.className = resp.ok ? "" : "error";
      msg.textContent = resp.ok ? `${kind}${d.label ? " '" + d.label + "'" : ""} sent` :
        `${kind} refused (${resp.status}): ${d.error}`;
      S.lastControl = { kind, status: resp.status };
    } catch (err) {
      msg.className = "error"; msg.textContent = "control failed: " + err;
    }
  }
  $("mark").addEventListener("click", () => {
    const label = $("label").value.trim();
    if (!label) { $("control-msg").textContent = "type a label first"; return; }
    send("mark", { label });
  });
  for (const b of document.querySelectorAll("button.quick")) {
    b.addEventListener("click", () => send("mark", { label: b.dataset.label }));
  }
  $("pause").addEventListener("click", () => send("pause"));
  $("resume").addEventListener("click", () => send("resume"));
  $("stop").addEventListener("click", () => {
    if (S.noConfirm || confirm("Stop the session after the current volume?")) send("stop");
  });

  connect();
})();
