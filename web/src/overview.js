// The overview: one card per machine with CPU, memory, disk, load and
// network, coloured by warning/critical thresholds, marked online/silent.
//
// A hub holds thousands of machines, so the page is a toolbar (counts, a
// filter, a sort) over at most `cap` cards: the toolbar is built once and
// never re-rendered by updates (typing keeps focus and caret), the grid is
// re-rendered at most four times a second however many WebSocket batches
// arrive (at the next animation frame for what the user does), and only the
// cards whose markup changed are replaced.
// Filter, sort and cap live in the URL (?q=…&sort=attention&limit=N, via
// replaceState) so a view can be linked and survives a reload; ?limit=N
// (1..1000) sets the initial cap, and "Show more" writes the new one.
import { level, pct, rate, num, ago, online, esc } from "./format.js";

// Cards drawn at once, and how many more "Show more" adds.
export const CAP_STEP = 120;
const LIMIT_MAX = 1000;
// The least time between two redraws for live data.
const RENDER_GAP_MS = 250;

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

// 10 000 → "10 000" (a no-break space between thousands, whatever the locale).
export function count(n) {
  return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, "\u00a0");
}

// What the URL asks for: filter text, sort, initial cap (1..1000 or the
// default; anything else is ignored).
export function viewFromUrl(search) {
  const p = new URLSearchParams(search);
  const raw = p.get("limit");
  const n = raw != null && /^\d{1,4}$/.test(raw) ? Number(raw) : NaN;
  return {
    q: (p.get("q") || "").slice(0, 200),
    sort: p.get("sort") === "attention" ? "attention" : "name",
    limit: n >= 1 && n <= LIMIT_MAX ? n : CAP_STEP,
  };
}

// Worst firing alert per machine: 0 critical, 1 warning (others rank none).
// Acknowledged alerts still fire; resolved ones do not. Muted ones (a
// silence covers them) are what no person is asked about, as in the alerts
// panel: they are counted apart (`muted`: the machines with only muted ones).
function firingByMachine(alerts) {
  const worst = new Map();
  const muted = new Set();
  for (const a of alerts.values()) {
    if (a.state !== "firing" && a.state !== "acknowledged") continue;
    if (a.muted) {
      muted.add(a.machine_id);
      continue;
    }
    const r = a.severity === "critical" ? 0 : a.severity === "warning" ? 1 : 2;
    const prev = worst.get(a.machine_id);
    if (prev == null || r < prev) worst.set(a.machine_id, r);
  }
  for (const id of worst.keys()) muted.delete(id);
  return { worst, muted };
}

const byName = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

export class Overview {
  constructor(state) {
    this.state = state;
    const v = viewFromUrl(location.search);
    this.q = v.q;
    this.sort = v.sort;
    this.initialCap = v.limit;
    this.cap = v.limit;
    this.frame = 0;
    this.timer = 0;
    this.lastRender = -Infinity;
    this.matching = 0;
    this.shown = null; // ids of the cards in the grid, in order
    this.html = []; // their markup, to replace only the changed ones

    this.el = document.createElement("section");
    this.el.className = "overview";
    this.el.innerHTML = `<div class="overview-bar">
        <span class="counts"></span>
        <input type="search" name="q" class="filter" maxlength="200" placeholder="Filter by machine or hostname" autocomplete="off" spellcheck="false" aria-label="Filter machines">
        <label class="sort">Sort <select name="sort"><option value="name">name</option><option value="attention">needs attention</option></select></label>
      </div>
      <section id="overview" class="grid"></section>
      <div class="overview-more" hidden><span class="showing"></span> <button type="button" class="show-more">Show more</button></div>`;
    this.countsEl = this.el.querySelector(".counts");
    this.grid = this.el.querySelector("#overview");
    this.more = this.el.querySelector(".overview-more");
    this.showingEl = this.el.querySelector(".showing");
    const input = this.el.querySelector("input.filter");
    const select = this.el.querySelector("select[name=sort]");
    input.value = this.q; // a property, never markup
    select.value = this.sort;
    input.addEventListener("input", () => {
      this.q = input.value.slice(0, 200);
      this.cap = this.initialCap;
      this.toUrl();
      this.schedule(true);
    });
    select.addEventListener("change", () => {
      this.sort = select.value === "attention" ? "attention" : "name";
      this.toUrl();
      this.schedule(true);
    });
    this.el.querySelector(".show-more").addEventListener("click", () => {
      // Never above what matches, never below where it started.
      this.cap = Math.max(this.initialCap, Math.min(this.cap + CAP_STEP, this.matching));
      this.toUrl();
      this.schedule(true);
    });
  }

  // The filter, sort and cap into the address bar, other parameters kept.
  toUrl() {
    const u = new URL(location.href);
    if (this.q) u.searchParams.set("q", this.q);
    else u.searchParams.delete("q");
    if (this.sort === "attention") u.searchParams.set("sort", "attention");
    else u.searchParams.delete("sort");
    const limit = Math.min(this.cap, LIMIT_MAX);
    if (limit !== CAP_STEP) u.searchParams.set("limit", String(limit));
    else u.searchParams.delete("limit");
    history.replaceState(history.state, "", u.pathname + u.search + u.hash);
  }

  // At most one render per RENDER_GAP_MS for live data; soon: the next frame.
  schedule(soon = false) {
    if (this.frame) return;
    // Live data changes each machine once a second: redrawn at most every
    // RENDER_GAP_MS. What the user does is drawn at the next frame.
    const wait = soon ? 0 : this.lastRender + RENDER_GAP_MS - performance.now();
    if (wait > 0) {
      if (!this.timer) {
        this.timer = setTimeout(() => {
          this.timer = 0;
          this.schedule();
        }, wait);
      }
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = 0;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.lastRender = performance.now();
      this.render();
    });
  }

  destroy() {
    if (this.frame) cancelAnimationFrame(this.frame);
    if (this.timer) clearTimeout(this.timer);
    this.frame = 0;
    this.timer = 0;
  }

  render() {
    const { summaries, infos, alerts } = this.state;
    const ids = new Set(summaries.keys());
    for (const id of infos.keys()) ids.add(id);
    const { worst: firing, muted } = firingByMachine(alerts);
    const needle = this.q.trim().toLowerCase();
    let on = 0;
    let alerting = 0;
    const rows = [];
    for (const id of ids) {
      const s = summaries.get(id);
      const isOn = online(s);
      if (isOn) on++;
      const f = firing.get(id);
      if (f != null) alerting++;
      if (needle) {
        const host = infos.get(id)?.hostname;
        if (!id.toLowerCase().includes(needle) && !(host && String(host).toLowerCase().includes(needle))) continue;
      }
      rows.push({ id, s, isOn, f });
    }
    this.countsEl.textContent =
      `${count(ids.size)} machine${ids.size === 1 ? "" : "s"} · ${count(on)} online · ` +
      `${count(ids.size - on)} silent · ${count(alerting)} alerting` +
      (muted.size ? ` · ${count(muted.size)} muted` : "");

    if (this.sort === "attention") {
      // Firing critical, firing warning, silent, then the fullest of CPU,
      // memory and disk; ties by name.
      for (const r of rows) {
        r.tier = r.f === 0 ? 0 : r.f === 1 ? 1 : !r.isOn ? 2 : 3;
        r.peak = r.s ? Math.max(r.s.cpu ?? -1, r.s.memory ?? -1, r.s.disk ?? -1) : -1;
      }
      rows.sort((a, b) => a.tier - b.tier || b.peak - a.peak || byName(a.id, b.id));
    } else {
      rows.sort((a, b) => byName(a.id, b.id));
    }

    this.matching = rows.length;
    const shown = rows.slice(0, this.cap);
    if (rows.length > shown.length) {
      this.showingEl.textContent = `Showing ${count(shown.length)} of ${count(rows.length)} matching — type to narrow`;
      this.more.hidden = false;
    } else {
      this.more.hidden = true;
    }

    if (shown.length === 0) {
      this.grid.innerHTML =
        ids.size === 0
          ? `<p class="empty">No machine has reported yet.</p>`
          : `<p class="empty">No machine matches “${esc(this.q.trim())}”.</p>`;
      this.shown = null;
      this.html = [];
      return;
    }
    const html = shown.map((r) => card(r.id, r.s, infos.get(r.id)));
    const same =
      this.shown &&
      this.shown.length === shown.length &&
      this.grid.children.length === shown.length &&
      shown.every((r, i) => r.id === this.shown[i]);
    if (same) {
      // The same cards in the same order: replace only those that changed.
      const t = document.createElement("template");
      for (let i = 0; i < html.length; i++) {
        if (html[i] === this.html[i]) continue;
        t.innerHTML = html[i];
        this.grid.replaceChild(t.content.firstElementChild, this.grid.children[i]);
      }
    } else {
      this.grid.innerHTML = html.join("");
    }
    this.shown = shown.map((r) => r.id);
    this.html = html;
  }
}
