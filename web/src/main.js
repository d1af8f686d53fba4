// The sysmonstm dashboard: the overview (a card per machine, filtered,
// sorted and capped; overview.js) and a machine page
// with live per-second charts, history zoom, processes, filesystems,
// interfaces and alerts; the rules editor at /rules. Live data comes over /ws (arrays of
// {type, data} updates); history and recent alerts over /api.
import { LiveFeed } from "./feed.js";
import { Overview } from "./overview.js";
import { MachinePage } from "./machine.js";
import { AlertsPanel } from "./alerts.js";
import { RulesPage } from "./rules.js";

const state = {
  summaries: new Map(), // machine -> Summary
  details: new Map(), // machine -> full snapshot (machine page only)
  infos: new Map(), // machine -> MachineInfo
  alerts: new Map(), // "machine:rule" -> latest AlertEvent
};

const app = document.getElementById("app");
const conn = document.getElementById("conn");
let page = null; // MachinePage when on /machine/<id>
let rulesPage = null; // RulesPage when on /rules
let overview = null; // Overview when on the machines' page
const alertsPanel = new AlertsPanel();

const feed = new LiveFeed({
  onStatus(s) {
    conn.textContent = s;
    conn.className = "conn " + (s === "live" ? "ok" : "bad");
  },
  onUpdates(items) {
    let alertsChanged = false;
    for (const u of items) {
      if (u.type === "summary") state.summaries.set(u.data.machine_id, u.data);
      else if (u.type === "snapshot") {
        state.details.set(u.data.machine_id, u.data);
        state.summaries.set(u.data.machine_id, u.data);
        if (page && page.id === u.data.machine_id) page.onSnapshot(u.data);
      } else if (u.type === "info") {
        state.infos.set(u.data.machine_id, u.data);
        if (page && page.id === u.data.machine_id) page.onInfo(u.data);
      } else if (u.type === "alert") {
        state.alerts.set(u.data.machine_id + ":" + u.data.rule, u.data);
        alertsPanel.onLive(u.data);
        alertsChanged = true;
      } else if (u.type === "forget") {
        // `sysmonstm machines forget`: the machine leaves the view.
        const id = u.data.machine_id;
        state.summaries.delete(id);
        state.details.delete(id);
        state.infos.delete(id);
        for (const k of [...state.alerts.keys()]) if (k.startsWith(id + ":")) state.alerts.delete(k);
        alertsChanged = true;
      }
    }
    // Coalesced: at most four renders a second, however many batches.
    if (overview) overview.schedule();
    if (alertsChanged) alertsPanel.render(state.alerts, page ? page.id : null);
  },
});

function route() {
  const m = location.pathname.match(/^\/machine\/([a-z0-9_-]+)\/?$/);
  if (page) page.destroy();
  if (rulesPage) rulesPage.destroy();
  if (overview) overview.destroy();
  page = null;
  rulesPage = null;
  overview = null;
  app.innerHTML = "";
  if (/^\/rules\/?$/.test(location.pathname) && !readOnly) {
    rulesPage = new RulesPage(app);
    app.appendChild(alertsPanel.el);
    feed.subscribe(null);
  } else if (m) {
    const id = m[1];
    page = new MachinePage(id, app, state);
    app.appendChild(alertsPanel.el);
    feed.subscribe(id);
  } else {
    overview = new Overview(state);
    app.appendChild(overview.el);
    app.appendChild(alertsPanel.el);
    feed.subscribe(null);
    overview.render();
  }
  alertsPanel.render(state.alerts, page ? page.id : null);
  alertsPanel.loadRecent(page ? page.id : null);
}

// Links inside the app change the view without a reload.
document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-nav]");
  if (!a || e.ctrlKey || e.metaKey || e.button !== 0) return;
  e.preventDefault();
  history.pushState(null, "", a.getAttribute("href"));
  route();
});
window.addEventListener("popstate", route);

// Online/silent is a matter of time passing: re-evaluate every second.
setInterval(() => {
  if (page) page.tick();
  else if (overview) overview.schedule();
}, 1000);

// A tab out of sight for a while on the overview or the rules stops its
// live feed: nothing is drawn there, so nothing need be sent. Back in sight,
// the current state comes first, and the recent alerts are read again for
// what came and went meanwhile. The machine page keeps its feed: its charts
// are per-second history.
const PAUSE_HIDDEN_MS = 30000;
let pauseTimer = null;
document.addEventListener("visibilitychange", () => {
  clearTimeout(pauseTimer);
  if (document.visibilityState === "hidden") {
    pauseTimer = setTimeout(() => {
      if (!page) feed.pause();
    }, PAUSE_HIDDEN_MS);
  } else if (feed.paused) {
    feed.resume();
    alertsPanel.loadRecent(page ? page.id : null);
  }
});

// The public edge is read-only (GET /api/mode says so): no rules editor
// and no link to it; everything else is the same page.
let readOnly = false;
async function start() {
  try {
    const r = await fetch("/api/mode");
    if (r.ok && (await r.json()).read_only) {
      readOnly = true;
      document.body.classList.add("read-only");
      const badge = document.createElement("span");
      badge.className = "read-only-badge";
      badge.textContent = "read-only";
      conn.before(badge);
    }
  } catch (e) {
    // An older gateway without /api/mode: the full page.
  }
  route();
  feed.start();
}
start();
