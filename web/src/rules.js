// The rules editor (/rules): lists the alert rules from GET /api/rules and
// adds, changes and removes them through PUT/DELETE /api/rules/{name}. The
// gateway checks every rule with the CLI's own validation; its 400 names the
// field, which is marked here. Writes need the API token: the user enters it
// once and it stays in sessionStorage (this tab only, gone when it closes).
import { esc } from "./format.js";

const TOKEN_KEY = "sysmonstm.apiToken";
const METRICS = [
  "cpu", "memory", "swap", "disk", "load1", "load5", "load15", "load1_per_core", "load5_per_core",
  "load15_per_core", "net_rx", "net_tx", "disk_read", "disk_write", "processes", "temperature", "silent",
];
const OPS = [">", ">=", "<", "<="];
const SEVERITIES = ["info", "warning", "critical"];

const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export class RulesPage {
  constructor(root) {
    this.el = document.createElement("section");
    this.el.className = "rules-page";
    root.appendChild(this.el);
    this.rules = [];
    this.message = null; // {kind: "ok"|"error", text, field}
    this.editing = null; // the rule in the form, or null for a new one
    this.render();
    this.load();
  }

  destroy() {
    this.el.remove();
  }

  async load() {
    try {
      const r = await fetch("/api/rules");
      const body = await r.json();
      if (!r.ok) throw new Error(body.error || r.statusText);
      this.rules = body;
      this.loadError = null;
    } catch (e) {
      this.loadError = String(e.message || e);
    }
    this.renderList();
  }

  render() {
    this.el.innerHTML = `
      <h2>Alert rules</h2>
      <div class="token"></div>
      <table class="rules"><thead><tr><th>name</th><th>severity</th><th>condition</th><th>for</th>
        <th>clear</th><th>machines</th><th></th></tr></thead><tbody></tbody></table>
      <p class="rules-note"></p>
      <form class="rule-form" autocomplete="off"></form>
      <p class="rule-message" role="status"></p>`;
    this.renderToken();
    this.renderForm();
    this.renderList();
  }

  renderToken() {
    const box = this.el.querySelector(".token");
    if (token.get()) {
      box.innerHTML = `<span class="dim">API token set for this tab.</span> <button type="button" class="forget-token">forget</button>`;
      box.querySelector(".forget-token").onclick = () => {
        token.clear();
        this.renderToken();
      };
    } else {
      box.innerHTML = `<label>API token <input type="password" name="api-token" size="40"
        placeholder="needed to change rules (kept for this tab only)"></label> <button type="button" class="use-token">use</button>`;
      const input = box.querySelector("input");
      const use = () => {
        if (!input.value.trim()) return;
        token.set(input.value.trim());
        this.renderToken();
      };
      box.querySelector(".use-token").onclick = use;
      input.onkeydown = (e) => {
        if (e.key === "Enter") {
          e.preventDefault();
          use();
        }
      };
    }
  }

  renderList() {
    const tbody = this.el.querySelector("table.rules tbody");
    tbody.innerHTML = this.rules
      .map(
        (r) => `<tr data-rule="${esc(r.name)}">
          <td class="name">${esc(r.name)}</td>
          <td><span class="sev ${esc(r.severity)}">${esc(r.severity)}</span></td>
          <td>${esc(r.metric)}${r.mount ? "(" + esc(r.mount) + ")" : ""} ${esc(r.op || ">")} ${esc(r.threshold)}</td>
          <td>${esc(r.for || "")}</td>
          <td>${r.clear != null ? esc(r.clear) : ""}</td>
          <td>${esc((r.machines || ["*"]).join(", "))}${r.exclude && r.exclude.length ? " except " + esc(r.exclude.join(", ")) : ""}</td>
          <td class="actions"><button type="button" class="edit">change</button> <button type="button" class="remove">remove</button></td>
        </tr>`
      )
      .join("");
    for (const tr of tbody.querySelectorAll("tr")) {
      const rule = this.rules.find((r) => r.name === tr.dataset.rule);
      tr.querySelector(".edit").onclick = () => {
        this.editing = rule;
        this.renderForm();
      };
      tr.querySelector(".remove").onclick = () => this.remove(rule.name);
    }
    this.el.querySelector(".rules-note").textContent = this.loadError
      ? "rules unavailable: " + this.loadError
      : this.rules.length
        ? ""
        : "No rules yet.";
  }

  renderForm() {
    const r = this.editing || { op: ">", for: "1m", severity: "warning", machines: ["*"] };
    const opt = (list, cur) => list.map((v) => `<option${v === cur ? " selected" : ""}>${esc(v)}</option>`).join("");
    const form = this.el.querySelector(".rule-form");
    form.innerHTML = `
      <h3>${this.editing ? "Change rule " + esc(r.name) : "Add a rule"}</h3>
      <label data-field="name">name <input name="name" value="${esc(r.name || "")}" ${this.editing ? "readonly" : ""} placeholder="cpu_high"></label>
      <label data-field="metric">metric <select name="metric">${opt(METRICS, r.metric || "cpu")}</select></label>
      <label data-field="mount">mount <input name="mount" value="${esc(r.mount || "")}" placeholder="(disk only) /var"></label>
      <label data-field="op">op <select name="op">${opt(OPS, r.op || ">")}</select></label>
      <label data-field="threshold">threshold <input name="threshold" value="${esc(r.threshold ?? "")}" inputmode="decimal"></label>
      <label data-field="clear">clear <input name="clear" value="${esc(r.clear ?? "")}" placeholder="(the threshold)"></label>
      <label data-field="for">for <input name="for" value="${esc(r.for || "")}" placeholder="1m"></label>
      <label data-field="severity">severity <select name="severity">${opt(SEVERITIES, r.severity)}</select></label>
      <label data-field="machines">machines <input name="machines" value="${esc((r.machines || ["*"]).join(", "))}"></label>
      <label data-field="exclude">exclude <input name="exclude" value="${esc((r.exclude || []).join(", "))}"></label>
      <label data-field="repeat">repeat <input name="repeat" value="${esc(r.repeat || "")}" placeholder="(none) 1h"></label>
      <label data-field="description" class="wide">description <input name="description" value="${esc(r.description || "")}"></label>
      <div class="buttons"><button type="submit" class="save">${this.editing ? "save" : "add"}</button>
      ${this.editing ? '<button type="button" class="cancel">cancel</button>' : ""}</div>`;
    form.onsubmit = (e) => {
      e.preventDefault();
      this.save(new FormData(form));
    };
    const cancel = form.querySelector(".cancel");
    if (cancel)
      cancel.onclick = () => {
        this.editing = null;
        this.renderForm();
      };
    this.showMessage();
  }

  // The form as a rule: empty optional fields are left out, so the gateway
  // applies the same defaults as a rules file.
  ruleFrom(fd) {
    const s = (k) => String(fd.get(k) || "").trim();
    const list = (k) =>
      s(k)
        .split(",")
        .map((x) => x.trim())
        .filter(Boolean);
    const num = (k) => (s(k) === "" ? undefined : Number(s(k)));
    const rule = { metric: s("metric"), op: s("op"), threshold: num("threshold"), severity: s("severity") };
    if (s("threshold") !== "" && !Number.isFinite(rule.threshold)) rule.threshold = s("threshold");
    if (s("clear") !== "") rule.clear = Number.isFinite(num("clear")) ? num("clear") : s("clear");
    if (s("for")) rule.for = s("for");
    if (s("mount")) rule.mount = s("mount");
    if (list("machines").length) rule.machines = list("machines");
    if (list("exclude").length) rule.exclude = list("exclude");
    if (s("repeat")) rule.repeat = s("repeat");
    if (s("description")) rule.description = s("description");
    return { name: s("name"), rule };
  }

  async save(fd) {
    const { name, rule } = this.ruleFrom(fd);
    if (!name) return this.fail("the rule needs a name", "name");
    const ok = await this.write("PUT", name, JSON.stringify(rule));
    if (ok) {
      this.editing = null;
      this.renderForm();
      this.message = { kind: "ok", text: `rule ${name} saved` };
      this.showMessage();
      await this.load();
    }
  }

  async remove(name) {
    if (!confirm(`Remove rule ${name}? Its firing alerts resolve.`)) return;
    if (await this.write("DELETE", name)) {
      this.message = { kind: "ok", text: `rule ${name} removed` };
      this.showMessage();
      await this.load();
    }
  }

  // One write; true when it was done, else the gateway's answer is shown.
  async write(method, name, body) {
    const t = token.get();
    if (!t) return this.fail("enter the API token first", null);
    let r, answer;
    try {
      r = await fetch("/api/rules/" + encodeURIComponent(name), {
        method,
        headers: { Authorization: "Bearer " + t, "Content-Type": "application/json" },
        body,
      });
      answer = await r.json().catch(() => ({}));
    } catch (e) {
      return this.fail("the gateway did not answer: " + (e.message || e), null);
    }
    if (r.ok) return true;
    if (r.status === 401) {
      token.clear();
      this.renderToken();
    }
    return this.fail(answer.error || `${r.status} ${r.statusText}`, answer.parameter || null);
  }

  fail(text, field) {
    this.message = { kind: "error", text, field };
    this.showMessage();
    return false;
  }

  showMessage() {
    const p = this.el.querySelector(".rule-message");
    const m = this.message;
    p.textContent = m ? m.text : "";
    p.className = "rule-message " + (m ? m.kind : "");
    for (const l of this.el.querySelectorAll(".rule-form label")) {
      l.classList.toggle("invalid", !!(m && m.field && l.dataset.field === m.field));
    }
  }
}
