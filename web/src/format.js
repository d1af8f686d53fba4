// Number formatting and the warning/critical thresholds the colours use.
export const THRESHOLDS = {
  cpu: [80, 95],
  memory: [85, 95],
  disk: [85, 95],
  swap: [50, 80],
  load_per_core: [1, 2],
};

export function level(metric, v) {
  const t = THRESHOLDS[metric];
  if (v == null || !t) return "";
  return v >= t[1] ? "crit" : v >= t[0] ? "warn" : "ok";
}

export function pct(v) {
  return v == null ? "–" : v.toFixed(1) + " %";
}

export function bytes(v) {
  if (v == null) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + u[i];
}

export function rate(v) {
  return v == null ? "–" : bytes(v) + "/s";
}

export function num(v, d = 2) {
  return v == null ? "–" : Number(v).toFixed(d);
}

export function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

// Silent: nothing for 10 s or three intervals, whichever is longer.
export function online(summary) {
  if (!summary) return false;
  const limit = Math.max(10000, 3 * Math.max(summary.interval_ms || 1000, 1000));
  return Date.now() - summary.timestamp_ms <= limit;
}

export function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// "Debian GNU/Linux 12": the distribution's name and version. Earlier agents
// sent sysinfo's long version ("Linux (Debian GNU/Linux 12)") as the
// version, which already holds the name: shown alone, not after the name.
export function osLine(info) {
  const name = (info.os_name || "").trim();
  const version = (info.os_version || "").trim();
  if (!name) return version;
  if (version.includes(name)) return version;
  return version ? `${name} ${version}` : name;
}
