// The machine page: facts, live per-second charts (uPlot), a history chart
// that zooms (1 h, 24 h, 7 d, 30 d) from /api/.../history, top processes,
// filesystems, disks and interfaces. The live charts show a fixed window
// that scrolls (the last five minutes, as Netdata and Beszel do): opened
// fresh, they start from the stored history of that window, not empty.
import uPlot from "uplot";
import { level, pct, bytes, rate, num, ago, online, esc, osLine } from "./format.js";

const LIVE_WINDOW_S = 300; // five minutes
const LIVE_MAX_POINTS = 1200; // agents may sample faster than 1 Hz
// Time-axis ticks in whole seconds: with a few points, uPlot would
// otherwise pick sub-second steps and label them ":20.500".
const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
const RANGES = { "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };
const METRICS = ["cpu", "memory", "swap", "load1", "load5", "load15", "net_rx", "net_tx", "disk_read", "disk_write", "processes"];

const LIVE = [
  { key: "cpu", title: "CPU %", series: [["cpu", "#4e9af1"]], max: 100 },
  { key: "memory", title: "Memory %", series: [["memory", "#a77bf3"], ["swap", "#f3a07b"]], max: 100 },
  { key: "load", title: "Load", series: [["load1", "#49c5b6"], ["load5", "#e0c341"], ["load15", "#e07b41"]] },
  { key: "net", title: "Network bytes/s", series: [["net_rx", "#5fd35f"], ["net_tx", "#f35f8a"]], fmt: rate },
];

function size(el) {
  return { width: Math.max(280, el.clientWidth - 16), height: 180 };
}

const pad = (n) => String(n).padStart(2, "0");

// Clock time of a tick: HH:MM:SS when ticks are less than a minute apart,
// HH:MM otherwise, and the date once ticks are a day apart.
function clock(t, incr) {
  const d = new Date(t * 1000);
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (incr >= 86400) return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return incr < 60 ? `${hm}:${pad(d.getSeconds())}` : hm;
}

// The x axis of a live chart; the labels drawn are kept in data-ticks (the
// canvas has no text to read back).
function timeAxis(el) {
  return {
    stroke: "#aaa",
    grid: { stroke: "#333" },
    incrs: TIME_INCRS,
    values: (u, splits, axisIdx, space, incr) => {
      const labels = splits.map((t) => clock(t, incr));
      el.dataset.ticks = labels.join(" ");
      return labels;
    },
  };
}

export class MachinePage {
  constructor(id, root, state) {
    this.id = id;
    this.state = state;
    this.range = "1h";
    this.metric = "cpu";
    this.el = document.createElement("section");
    this.el.className = "machine";
    this.el.innerHTML = `
      <nav><a href="/" data-nav>← all machines</a></nav>
      <h1><span class="name">${esc(id)}</span> <span class="status"></span></h1>
      <div class="facts"></div>
      <h2>Live</h2><div class="charts"></div>
      <h2>History</h2>
      <div class="history-controls">
        <select class="metric">${METRICS.map((m) => `<option${m === "cpu" ? " selected" : ""}>${m}</option>`).join("")}</select>
        ${Object.keys(RANGES).map((r) => `<button data-range="${r}"${r === "1h" ? ' class="on"' : ""}>${r}</button>`).join("")}
        <span class="history-note"></span>
      </div>
      <div class="history chart" data-points="0"></div>
      <div class="tables"></div>`;
    root.appendChild(this.el);
    this.live = { ts: [] };
    for (const c of LIVE) for (const [s] of c.series) this.live[s] = [];
    this.charts = LIVE.map((c) => this.makeLive(c));
    this.gone = false;
    this.historyPlot = null;
    this.el.querySelector(".metric").addEventListener("change", (e) => {
      this.metric = e.target.value;
      this.loadHistory();
    });
    for (const b of this.el.querySelectorAll("button[data-range]")) {
      b.addEventListener("click", () => {
        this.range = b.dataset.range;
        this.el.querySelectorAll("button[data-range]").forEach((x) => x.classList.toggle("on", x === b));
        this.loadHistory();
      });
    }
    this.onResize = () => {
      for (const c of this.charts) c.plot.setSize(size(c.el));
      if (this.historyPlot) this.historyPlot.setSize(size(this.el.querySelector(".history")));
    };
    window.addEventListener("resize", this.onResize);
    const info = state.infos.get(id);
    if (info) this.onInfo(info);
    const detail = state.details.get(id);
    if (detail) this.onSnapshot(detail);
    this.loadRecent();
    this.loadHistory();
    this.historyTimer = setInterval(() => this.loadHistory(), 60000);
  }

  makeLive(c) {
    const el = document.createElement("div");
    el.className = "chart live";
    el.dataset.chart = c.key;
    el.dataset.points = "0";
    this.el.querySelector(".charts").appendChild(el);
    const opts = {
      title: c.title,
      ...size(el),
      scales: {
        // The window ends at the newest point and always spans five minutes.
        x: {
          time: true,
          range: (u, min, max) => {
            const end = max ?? Date.now() / 1000;
            return [end - LIVE_WINDOW_S, end];
          },
        },
        y: c.max ? { range: [0, c.max] } : { auto: true },
      },
      series: [
        { value: (u, v) => (v == null ? "–" : clock(v, 1)) },
        ...c.series.map(([s, color]) => ({ label: s, stroke: color, width: 1.5, value: (u, v) => (c.fmt ? c.fmt(v) : num(v)) })),
      ],
      axes: [timeAxis(el), { stroke: "#aaa", grid: { stroke: "#333" }, size: 70, values: (u, vs) => vs.map((v) => (c.fmt ? bytes(v) : v)) }],
    };
    const plot = new uPlot(opts, [[], ...c.series.map(() => [])], el);
    return { c, el, plot };
  }

  onInfo(info) {
    const f = this.el.querySelector(".facts");
    f.innerHTML = `<dl>
      <dt>Host</dt><dd class="host">${esc(info.hostname)}</dd>
      <dt>OS</dt><dd class="os">${esc(osLine(info))} (kernel ${esc(info.kernel_version)}, ${esc(info.architecture)})</dd>
      <dt>CPU</dt><dd class="cpu">${esc(info.cpu_model)} × ${info.core_count}</dd>
      <dt>Memory</dt><dd class="memory">${bytes(info.memory_total_bytes)}</dd>
      <dt>Agent</dt><dd>${esc(info.agent_version)}</dd>
      <dt>Booted</dt><dd>${new Date(info.boot_time_s * 1000).toLocaleString()}</dd></dl>`;
  }

  onSnapshot(d) {
    const t = d.timestamp_ms / 1000;
    const last = this.live.ts[this.live.ts.length - 1];
    if (last !== undefined && t <= last) return;
    this.live.ts.push(t);
    for (const c of LIVE) for (const [s] of c.series) this.live[s].push(d[s] ?? null);
    this.drawLive();
    this.renderTables(d);
    this.tick();
  }

  // Drops what left the window, then redraws every live chart.
  drawLive() {
    const ts = this.live.ts;
    const end = ts[ts.length - 1];
    let drop = Math.max(0, ts.length - LIVE_MAX_POINTS);
    while (drop < ts.length && ts[drop] < end - LIVE_WINDOW_S) drop++;
    if (drop > 0) for (const k of Object.keys(this.live)) this.live[k].splice(0, drop);
    for (const { c, el, plot } of this.charts) {
      plot.setData([this.live.ts, ...c.series.map(([s]) => this.live[s])]);
      el.dataset.points = String(this.live.ts.length);
    }
  }

  // The live window's stored past (one history request per series, 1 s
  // steps over five minutes), put before the live points. Without a
  // database the charts simply start empty.
  async loadRecent() {
    const to = Date.now();
    const q = (metric) => new URLSearchParams({ metric, from: String(to - LIVE_WINDOW_S * 1000), to: String(to) });
    const keys = LIVE.flatMap((c) => c.series.map(([s]) => s));
    const answers = await Promise.all(
      keys.map(async (m) => {
        try {
          const r = await fetch(`/api/machines/${encodeURIComponent(this.id)}/history?${q(m)}`);
          return r.ok ? [m, await r.json()] : null;
        } catch {
          return null;
        }
      })
    );
    if (this.gone) return;
    const rows = new Map(); // seconds -> { metric: avg }
    for (const a of answers) {
      if (!a) continue;
      const [m, h] = a;
      h.ts.forEach((ms, i) => {
        const t = ms / 1000;
        if (!rows.has(t)) rows.set(t, {});
        rows.get(t)[m] = h.avg[i];
      });
    }
    // Only what is older than the first live point: live data wins.
    const first = this.live.ts.length ? this.live.ts[0] : Infinity;
    const older = [...rows.keys()].filter((t) => t < first).sort((a, b) => a - b);
    if (!older.length) return;
    this.live.ts = [...older, ...this.live.ts];
    for (const k of keys) this.live[k] = [...older.map((t) => rows.get(t)[k] ?? null), ...this.live[k]];
    this.drawLive();
  }

  tick() {
    const s = this.state.summaries.get(this.id);
    const st = this.el.querySelector(".status");
    const on = online(s);
    st.textContent = s ? `${on ? "online" : "silent"} · seen ${ago(s.timestamp_ms)}` : "no snapshot yet";
    st.className = "status " + (on ? "online" : "silent");
  }

  renderTables(d) {
    const procs = (list) =>
      list.map((p) => `<tr><td>${p.pid}</td><td>${esc(p.name)}</td><td>${num(p.cpu_percent, 1)}</td><td>${bytes(p.rss_bytes)}</td></tr>`).join("");
    const fs = d.filesystems
      .map(
        (f) => `<tr><td>${esc(f.mount)}</td><td>${esc(f.fs_type)}</td><td>${bytes(f.used_bytes)} / ${bytes(f.total_bytes)}</td>
        <td class="${level("disk", f.used_percent)}">${pct(f.used_percent)}</td></tr>`
      )
      .join("");
    const ifs = d.interfaces
      .map((i) => `<tr><td>${esc(i.name)}</td><td>${rate(i.rx_bytes_per_s)}</td><td>${rate(i.tx_bytes_per_s)}</td><td>${num(i.rx_errors_per_s)} / ${num(i.tx_errors_per_s)}</td></tr>`)
      .join("");
    const disks = d.disks.map((k) => `<tr><td>${esc(k.name)}</td><td>${rate(k.read_bytes_per_s)}</td><td>${rate(k.write_bytes_per_s)}</td></tr>`).join("");
    const head = (...h) => `<thead><tr>${h.map((x) => `<th>${x}</th>`).join("")}</tr></thead>`;
    // The public edge leaves processes out (edge_show_processes): no empty tables then.
    const processes =
      d.top_cpu.length || d.top_memory.length
        ? `<div class="table"><h3>Top CPU</h3><table class="top-cpu">${head("PID", "Name", "CPU %", "RSS")}<tbody>${procs(d.top_cpu)}</tbody></table></div>
      <div class="table"><h3>Top memory</h3><table class="top-mem">${head("PID", "Name", "CPU %", "RSS")}<tbody>${procs(d.top_memory)}</tbody></table></div>`
        : "";
    this.el.querySelector(".tables").innerHTML = `
      ${processes}
      <div class="table"><h3>Filesystems</h3><table class="filesystems">${head("Mount", "Type", "Used", "%")}<tbody>${fs}</tbody></table></div>
      <div class="table"><h3>Interfaces</h3><table class="interfaces">${head("Name", "Rx", "Tx", "Errors/s")}<tbody>${ifs}</tbody></table></div>
      <div class="table"><h3>Disks</h3><table class="disks">${head("Name", "Read", "Write")}<tbody>${disks}</tbody></table></div>`;
  }

  async loadHistory() {
    const el = this.el.querySelector(".history");
    const note = this.el.querySelector(".history-note");
    const to = Date.now();
    const from = to - RANGES[this.range] * 1000;
    const q = new URLSearchParams({ metric: this.metric, from: String(from), to: String(to) });
    let h;
    try {
      const r = await fetch(`/api/machines/${encodeURIComponent(this.id)}/history?${q}`);
      h = await r.json();
      if (!r.ok) throw new Error(h.error || r.statusText);
    } catch (e) {
      note.textContent = "history unavailable: " + (e.message || e);
      return;
    }
    if (this.gone) return;
    note.textContent = `${h.points} points, ${h.resolution || "–"} data, step ${h.step_s} s`;
    const data = [h.ts.map((t) => t / 1000), h.avg, h.min, h.max];
    if (this.historyPlot) this.historyPlot.destroy();
    const fmt = this.metric.startsWith("net_") || this.metric.startsWith("disk_") ? rate : (v) => num(v);
    this.historyPlot = new uPlot(
      {
        title: `${this.metric} · last ${this.range}`,
        ...size(el),
        scales: { x: { time: true } },
        series: [
          { value: (u, v) => (v == null ? "–" : new Date(v * 1000).toLocaleString()) },
          { label: "avg", stroke: "#4e9af1", width: 1.5, value: (u, v) => fmt(v) },
          { label: "min", stroke: "#4e9af180", width: 1, value: (u, v) => fmt(v) },
          { label: "max", stroke: "#f35f8a80", width: 1, value: (u, v) => fmt(v) },
        ],
        axes: [timeAxis(el), { stroke: "#aaa", grid: { stroke: "#333" }, size: 70 }],
      },
      data,
      el
    );
    el.dataset.points = String(h.points);
  }

  destroy() {
    this.gone = true;
    clearInterval(this.historyTimer);
    window.removeEventListener("resize", this.onResize);
    for (const c of this.charts) c.plot.destroy();
    if (this.historyPlot) this.historyPlot.destroy();
    this.el.remove();
  }
}
