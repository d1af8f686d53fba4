// The overview: one card per machine with CPU, memory, disk, load and
// network, coloured by warning/critical thresholds, marked online/silent.
import { level, pct, rate, num, ago, online, esc } from "./format.js";

function bar(metric, v) {
  const w = v == null ? 0 : Math.max(0, Math.min(100, v));
  return `<div class="bar"><div class="fill ${level(metric, v)}" style="width:${w}%"></div></div>`;
}

function card(id, s, info) {
  const on = online(s);
  const cores = info && info.core_count ? info.core_count : null;
  const loadLevel = s && s.load1 != null && cores ? level("load_per_core", s.load1 / cores) : "";
  const host = info && info.hostname && info.hostname !== id ? `<span class="host">${esc(info.hostname)}</span>` : "";
  const row = (label, metric, v) =>
    `<div class="metric m-${metric}"><span class="label">${label}</span><span class="value ${level(metric, v)}">${pct(v)}</span>${bar(metric, v)}</div>`;
  return `<a class="card ${on ? "online" : "silent"}" href="/machine/${esc(id)}" data-nav data-machine="${esc(id)}" data-seq="${s ? s.seq : ""}">
    <div class="card-head"><span class="name">${esc(id)}</span>${host}<span class="status">${on ? "online" : "silent"}</span></div>
    ${row("CPU", "cpu", s && s.cpu)}
    ${row("Memory", "memory", s && s.memory)}
    ${row("Disk", "disk", s && s.disk)}
    <div class="metric m-load"><span class="label">Load</span><span class="value ${loadLevel}">${s ? num(s.load1) + " " + num(s.load5) + " " + num(s.load15) : "–"}</span></div>
    <div class="metric m-net"><span class="label">Net</span><span class="value">↓ ${rate(s && s.net_rx)} ↑ ${rate(s && s.net_tx)}</span></div>
    <div class="seen">${s ? "seen " + ago(s.timestamp_ms) : "no snapshot yet"}</div>
  </a>`;
}

export function renderOverview(el, state) {
  if (!el) return;
  const ids = new Set([...state.summaries.keys(), ...state.infos.keys()]);
  const sorted = [...ids].sort();
  if (sorted.length === 0) {
    el.innerHTML = `<p class="empty">No machine has reported yet.</p>`;
    return;
  }
  el.innerHTML = sorted.map((id) => card(id, state.summaries.get(id), state.infos.get(id))).join("");
}
