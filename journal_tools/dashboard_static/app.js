// TickerML dashboard: renders /api/state and follows /api/stream (server-sent events).
// Charts are drawn on canvas here (no external library, works offline); each chart
// canvas carries its last plotted value in data-last and its point count in data-points.
"use strict";

const COLORS = ["#58a6ff", "#a371f7", "#3fb950", "#d29922"];

function fmt(v, digits = 2, suffix = "") {
  if (v === null || v === undefined || Number.isNaN(v)) return "n/a";
  return Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits }) + suffix;
}

function timeText(ms) {
  if (!ms) return "-";
  return new Date(ms).toISOString().replace("T", " ").replace(".000Z", "Z");
}

function drawChart(canvas, lines, digits) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pts = lines.flatMap((l) => l.points);
  const primary = lines[0].points;
  canvas.dataset.points = String(primary.length);
  canvas.dataset.last = primary.length ? primary[primary.length - 1][1].toFixed(digits) : "";
  ctx.fillStyle = "#8a96a3"; ctx.font = "11px system-ui";
  if (!pts.length) { ctx.fillText("no data yet", 10, h / 2); return; }
  let t0 = Math.min(...pts.map((p) => p[0])), t1 = Math.max(...pts.map((p) => p[0]));
  let lo = Math.min(...pts.map((p) => p[1])), hi = Math.max(...pts.map((p) => p[1]));
  if (hi === lo) { hi += Math.abs(hi) * 0.01 || 1; lo -= Math.abs(lo) * 0.01 || 1; }
  if (t1 === t0) t1 = t0 + 1;
  const L = 62, R = 8, T = 8, B = 18;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (w - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (h - T - B);
  ctx.strokeStyle = "#2a3440"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4, yy = y(v);
    ctx.beginPath(); ctx.moveTo(L, yy); ctx.lineTo(w - R, yy); ctx.stroke();
    ctx.fillText(v.toFixed(digits), 4, yy + 4);
  }
  ctx.fillText(timeText(t0).slice(11, 19), L, h - 4);
  ctx.fillText(timeText(t1).slice(11, 19), w - R - 50, h - 4);
  lines.forEach((line, i) => {
    if (!line.points.length) return;
    ctx.strokeStyle = line.color || COLORS[i % COLORS.length]; ctx.lineWidth = 1.5;
    ctx.beginPath();
    line.points.forEach((p, j) => (j ? ctx.lineTo(x(p[0]), y(p[1])) : ctx.moveTo(x(p[0]), y(p[1]))));
    ctx.stroke();
    const last = line.points[line.points.length - 1];
    ctx.fillStyle = line.color || COLORS[i % COLORS.length];
    ctx.beginPath(); ctx.arc(x(last[0]), y(last[1]), 3, 0, 2 * Math.PI); ctx.fill();
  });
}

function setText(id, text, cls) {
  const el = document.getElementById(id);
  el.textContent = text;
  if (cls !== undefined) el.className = cls;
  return el;
}

function signed(v) { return v === null || v === undefined ? "" : v >= 0 ? "pos" : "neg"; }

function rows(tableId, data, cells) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...data.map((d) => {
    const tr = document.createElement("tr");
    cells(d).forEach(([text, cls]) => {
      const td = document.createElement("td");
      td.textContent = text; if (cls) td.className = cls;
      tr.appendChild(td);
    });
    return tr;
  }));
}

function render(s) {
  const m = s.summary, ses = s.session;
  document.body.dataset.version = String(s.version);
  document.body.dataset.outputs = String(ses.outputs);
  setText("session-id", ses.id);
  setText("session-mode", ses.mode);
  setText("session-strategy", ses.strategy);
  setText("session-live", ses.live ? "live" : ses.ended ? "replayed (ended)" : "replaying", ses.live ? "tag on" : "tag");
  setText("last-ts", timeText(ses.last_ts));
  setText("m-equity", fmt(m.equity)).dataset.value = String(m.equity);
  setText("m-pnl", fmt(m.pnl), signed(m.pnl)).dataset.value = String(m.pnl);
  setText("m-return", `${fmt(m.return_pct, 2, "%")} / ${fmt(m.benchmark_return_pct, 2, "%")}`);
  setText("m-drawdown", `${fmt(m.drawdown_pct, 2, "%")} (${fmt(m.max_drawdown_pct, 2, "%")})`);
  setText("m-sharpe", fmt(m.sharpe));
  setText("m-winrate", m.win_rate === null || m.win_rate === undefined ? "n/a" : fmt(m.win_rate * 100, 1, "%"));
  setText("m-pf", fmt(m.profit_factor));
  const level = s.breaker.level || "normal";
  setText("m-breaker", level, level === "normal" ? "pos" : "neg").title = s.breaker.detail || "";

  const se = s.series;
  drawChart(document.getElementById("chart-equity"), [{ points: se.equity }, { points: se.benchmark, color: "#8a96a3" }], 2);
  drawChart(document.getElementById("chart-drawdown"), [{ points: se.drawdown, color: "#f85149" }], 2);
  drawChart(document.getElementById("chart-sharpe"), [{ points: se.sharpe }], 2);
  drawChart(document.getElementById("chart-model"), [{ points: se.confidence }, { points: se.accuracy, color: "#3fb950" }], 2);
  const lastOf = (pts, d) => (pts.length ? pts[pts.length - 1][1].toFixed(d) : "");
  setText("last-equity", lastOf(se.equity, 2));
  setText("last-drawdown", lastOf(se.drawdown, 2));
  setText("last-sharpe", lastOf(se.sharpe, 2));
  setText("last-confidence", lastOf(se.confidence, 3));
  setText("last-accuracy", lastOf(se.accuracy, 3));

  rows("positions", s.positions, (p) => [[p.instrument], [p.qty, "num"], [fmt(p.avg_price), "num"], [p.mark || "-", "num"], [fmt(p.value), "num"], [fmt(p.unrealised), "num " + signed(p.unrealised)]]);
  rows("exposure", s.exposure, (e) => [[e.asset], [fmt(e.value), "num"], [fmt(e.pct_of_equity, 2, "%"), "num"]]);
  rows("connectivity", s.connectivity, (c) => [[c.stream], [c.status + (c.reason ? ` (${c.reason})` : ""), "status-" + c.status], [String(c.events), "num"], [fmt(c.last_event_age_s, 1), "num"]]);
  const sys = s.system;
  rows("system", [
    ["CPU %", fmt(sys.cpu_pct, 1)], ["load (1 min)", fmt(sys.load_1m)], ["memory used %", fmt(sys.memory_used_pct, 1)],
    ["dashboard RSS MB", fmt(sys.rss_mb, 1)], ["consumer lag s", sys.consumer_lag_s === null ? "n/a (replay)" : fmt(sys.consumer_lag_s)],
    ["journal writes / s", fmt(sys.journal_write_rate, 1)],
  ], (r) => [[r[0]], [r[1], "num"]]);
  rows("importance", s.model.importance, (f) => [[f.feature], [fmt(f.score, 3), "num"], [""]]);
  document.querySelectorAll("#importance tbody tr").forEach((tr, i) => {
    const bar = document.createElement("span"); bar.className = "bar";
    bar.style.width = `${Math.round(s.model.importance[i].score * 120)}px`;
    tr.lastChild.appendChild(bar);
  });
  setText("model-id", s.model.model_id ? `model ${s.model.model_id}` : "");
  const attn = document.getElementById("attention");
  if (s.model.attention.length) {
    attn.replaceChildren(...s.model.attention.slice().reverse().map((a) => {
      const div = document.createElement("div");
      const label = document.createElement("p"); label.className = "note";
      label.textContent = `${a.decision_id} ${a.action} at ${timeText(a.ts)}`;
      const row = document.createElement("div"); row.className = "attn-row";
      const max = Math.max(...a.weights, 1e-9);
      a.weights.forEach((wt) => { const b = document.createElement("span"); b.style.height = `${Math.round((wt / max) * 100)}%`; b.title = String(wt); row.appendChild(b); });
      div.append(label, row); return div;
    }));
  }
  setText("alert-count", String(s.alerts.length));
  document.getElementById("alerts").replaceChildren(...s.alerts.map((a) => {
    const li = document.createElement("li"); li.className = "sev-" + a.severity;
    li.textContent = `${timeText(a.ts)} [${a.severity}] ${a.rule}: ${a.message}` + (a.source === "system" ? " (system)" : "");
    return li;
  }));
}

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("/api/stream");
  es.addEventListener("state", (e) => { conn.textContent = "live updates"; conn.className = "tag on"; render(JSON.parse(e.data)); });
  es.onerror = () => { conn.textContent = "reconnecting"; conn.className = "tag off"; };
}

fetch("/api/state").then((r) => r.json()).then(render).finally(connect);
