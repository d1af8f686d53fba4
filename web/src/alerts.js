// The alerts panel: what fires now (latest event per machine and rule from
// the live feed) and recent events (from /api/alerts, i.e. the database).
import { esc, ago, num } from "./format.js";

const pad = (n) => String(n).padStart(2, "0");

// An event's time, short enough for the panel: the clock time today, the
// date and minute before that (the full time is the cell's title).
function when(ms) {
  const d = new Date(ms);
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === new Date().toDateString()) return hms;
  return `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hms.slice(0, 5)}`;
}

// A muted alert (a silence covers it: no notification goes out) as a badge:
// "muted until 14:05" (with the date when it ends on another day), the
// silence's id and comment in its title.
function mutedBadge(a) {
  if (!a.muted) return "";
  const s = a.silence || {};
  let until = "";
  if (s.ends_ms) {
    const d = new Date(s.ends_ms);
    const day = d.toDateString() === new Date().toDateString() ? "" : `${pad(d.getMonth() + 1)}-${pad(d.getDate())} `;
    until = ` until ${day}${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }
  const title = [s.id ? "silence " + s.id : "", s.comment || ""].filter(Boolean).join(": ");
  return `<span class="muted-badge" title="${esc(title)}">muted${until}</span>`;
}

export class AlertsPanel {
  constructor() {
    this.el = document.createElement("section");
    this.el.className = "alerts";
    this.recent = [];
    this.live = [];
    this.recentError = null;
    this.machine = null;
  }

  onLive(a) {
    // The same event sent again (re-marked when a silence comes or goes, or
    // after a reconnect) replaces its row in place; a new one goes first.
    const i = this.live.findIndex(
      (x) => x.machine_id === a.machine_id && x.rule === a.rule && x.state === a.state && x.timestamp_ms === a.timestamp_ms
    );
    if (i >= 0) {
      this.live[i] = a;
      return;
    }
    this.live.unshift(a);
    this.live = this.live.slice(0, 50);
  }

  async loadRecent(machine) {
    const since = new Date(Date.now() - 7 * 86400e3).toISOString();
    const q = new URLSearchParams({ since });
    if (machine) q.set("machine", machine);
    try {
      const r = await fetch("/api/alerts?" + q);
      const body = await r.json();
      if (!r.ok) throw new Error(body.error || r.statusText);
      this.recent = body.alerts;
      this.recentError = null;
    } catch (e) {
      this.recentError = String(e.message || e);
    }
    this.renderRecent();
  }

  render(alerts, machine) {
    const firing = [...alerts.values()]
      // Acknowledged alerts still fire (no more reminders): shown, marked.
      .filter((a) => (a.state === "firing" || a.state === "acknowledged") && (!machine || a.machine_id === machine))
      // Muted ones (a silence covers them) still fire: listed, greyed, last.
      .sort((a, b) =>
        !!a.muted !== !!b.muted
          ? a.muted
            ? 1
            : -1
          : a.severity === b.severity
            ? b.timestamp_ms - a.timestamp_ms
            : a.severity === "critical"
              ? -1
              : 1
      );
    const rows = firing
      .map(
        (a) => `<li class="alert ${esc(a.severity)}${a.muted ? " muted" : ""}" data-alert="${esc(a.machine_id)}:${esc(a.rule)}">
        <span class="sev">${esc(a.severity)}${a.state === "acknowledged" ? " · acked" : ""}</span>
        <a href="/machine/${esc(a.machine_id)}" data-nav>${esc(a.machine_id)}</a>
        <span class="rule">${esc(a.rule)}</span>${mutedBadge(a)}
        <span class="msg">${esc(a.message || `${a.metric} ${num(a.value)} > ${num(a.threshold)}`)}</span>
        <span class="when">since ${ago(a.since_ms)}</span></li>`
      )
      .join("");
    // The count is what needs a person; muted ones are counted beside it.
    const muted = firing.filter((a) => a.muted).length;
    this.machine = machine;
    this.el.innerHTML = `<h2>Alerts</h2>
      <h3>Firing now <span class="count">${firing.length - muted}</span>${muted ? ` <span class="count muted-count">+${muted} muted</span>` : ""}</h3>
      <ul class="firing">${rows || '<li class="none">Nothing is firing.</li>'}</ul>
      <h3>Recent events</h3><div class="recent"></div>`;
    this.renderRecent();
  }

  renderRecent() {
    const el = this.el.querySelector(".recent");
    if (!el) return;
    // On a machine page, that machine's events only (the stored ones are
    // asked for by machine already).
    const live = this.machine ? this.live.filter((a) => a.machine_id === this.machine) : this.live;
    const events = [...live, ...this.recent];
    const seen = new Set();
    const rows = [];
    for (const a of events) {
      const key = `${a.machine_id}:${a.rule}:${a.since_ms}:${a.state}`;
      if (seen.has(key)) continue;
      seen.add(key);
      rows.push(`<tr class="${esc(a.severity)}${a.muted ? " muted" : ""}" data-alert="${esc(a.machine_id)}:${esc(a.rule)}" data-state="${esc(a.state)}">
        <td class="when" title="${esc(new Date(a.timestamp_ms).toLocaleString())}">${when(a.timestamp_ms)}</td>
        <td class="what"><a href="/machine/${esc(a.machine_id)}" data-nav>${esc(a.machine_id)}</a><span class="rule">${esc(a.rule)}</span>${mutedBadge(a)}</td>
        <td class="state"><span class="${a.state === "resolved" ? "resolved" : "sev " + esc(a.severity)}">${esc(a.state)}</span></td><td class="num">${num(a.value, 1)}</td></tr>`);
      if (rows.length >= 30) break;
    }
    const note = this.recentError ? `<p class="note">Stored events unavailable: ${esc(this.recentError)}</p>` : "";
    el.innerHTML =
      note +
      (rows.length
        ? `<table class="events"><thead><tr><th>When</th><th>Alert</th><th>State</th><th class="num">Value</th></tr></thead><tbody>${rows.join("")}</tbody></table>`
        : '<p class="none">No events.</p>');
  }
}
