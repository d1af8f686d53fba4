// The browser test's driver: Playwright (npm playwright-core) drives
// Debian's chromium against a running gateway while real agents publish.
// Run by services/gateway/tests/browser.rs, which starts the hub, the
// gateway and three agents, and publishes a firing AlertEvent when this
// script prints "waiting-for-alert" (it answers on stdin).
//
// env: BASE_URL, CHROMIUM_BIN, SCREENSHOTS (dir), MACHINES (comma list),
//      ALERT (machine:rule expected to fire), API_TOKEN (the gateway's token,
//      typed into the rules editor).
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const base = process.env.BASE_URL;
const shots = process.env.SCREENSHOTS;
const machines = process.env.MACHINES.split(",");
const alertKey = process.env.ALERT;
const WAIT = 30000;

const lines = createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));
const step = (s) => console.log("step: " + s);

mkdirSync(shots, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "sysmonstm-chromium-"));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const errors = [];
let failed = false;
try {
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on("pageerror", (e) => errors.push("page error: " + e.message));
  // History and stored alerts answer 503 without a database; the page shows
  // that as a note, so those resource errors are expected, nothing else is.
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    if (m.text().startsWith("Failed to load resource") && (m.location().url || "").includes("/api/")) return;
    errors.push("console: " + m.text());
  });

  await page.goto(base + "/", { waitUntil: "load" });
  for (const m of machines) {
    await page.waitForSelector(`.card[data-machine="${m}"]`, { timeout: WAIT });
  }
  step("cards for " + machines.join(", "));

  // Cards update: every card's sequence number moves on, live.
  const seqs = async () =>
    page.$$eval(".card[data-machine]", (cs) => Object.fromEntries(cs.map((c) => [c.dataset.machine, Number(c.dataset.seq || 0)])));
  const first = await seqs();
  await page.waitForFunction(
    ({ first, machines }) => {
      const now = Object.fromEntries(
        [...document.querySelectorAll(".card[data-machine]")].map((c) => [c.dataset.machine, Number(c.dataset.seq || 0)])
      );
      return machines.every((m) => now[m] > first[m]);
    },
    { first, machines },
    { timeout: WAIT }
  );
  const online = await page.$$eval(".card.online", (cs) => cs.length);
  if (online < machines.length) throw new Error(`only ${online} cards online`);
  const cpuText = await page.$eval(`.card[data-machine="${machines[0]}"] .m-cpu .value`, (e) => e.textContent);
  if (!/%/.test(cpuText)) throw new Error("CPU value not shown: " + cpuText);
  step("cards update: " + JSON.stringify(first) + " → " + JSON.stringify(await seqs()));
  await page.screenshot({ path: join(shots, "overview.png"), fullPage: true });

  // A firing alert appears in the panel as it is published.
  console.log("waiting-for-alert");
  await nextLine();
  await page.waitForSelector(`li.alert[data-alert="${alertKey}"]`, { timeout: WAIT });
  step("firing alert shown: " + (await page.$eval(`li.alert[data-alert="${alertKey}"]`, (e) => e.textContent.replace(/\s+/g, " ").trim())));
  await page.screenshot({ path: join(shots, "overview-alert.png"), fullPage: true });

  // The machine page: live charts draw.
  await page.click(`.card[data-machine="${machines[0]}"]`);
  await page.waitForSelector(".chart.live[data-chart=cpu]", { timeout: WAIT });
  await page.waitForFunction(() => Number(document.querySelector(".chart.live[data-chart=cpu]").dataset.points) >= 3, null, {
    timeout: WAIT,
  });
  // Drawn, not only created: the canvas holds non-background pixels of the series colour.
  const drawn = await page.$eval(".chart.live[data-chart=cpu] canvas", (c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i + 2] > 200 && d[i] < 120) n++;
    return n;
  });
  if (drawn < 20) throw new Error("the CPU chart drew no line (" + drawn + " pixels)");
  await page.waitForSelector(".tables table.filesystems tbody tr", { timeout: WAIT });
  await page.waitForSelector(".tables table.top-cpu tbody tr", { timeout: WAIT });
  step(`machine page: cpu chart drawn (${drawn} line pixels), tables shown`);
  await page.screenshot({ path: join(shots, "machine.png"), fullPage: true });

  // The history view zooms.
  for (const r of ["24h", "7d", "30d", "1h"]) await page.click(`button[data-range="${r}"]`);
  await page.waitForFunction(() => document.querySelector(".history-note").textContent.length > 0, null, { timeout: WAIT });
  step("history: " + (await page.$eval(".history-note", (e) => e.textContent)));

  // The rules editor: the token entered once, an invalid rule refused with
  // its field marked, a rule added, changed and listed, another removed.
  page.on("dialog", (d) => d.accept());
  await page.click("a.nav-rules");
  await page.waitForSelector(".rules-page input[name=api-token]", { timeout: WAIT });
  const fill = async (rule) => {
    for (const [k, v] of Object.entries(rule)) {
      const sel = `.rule-form [name=${k}]`;
      if ((await page.$eval(sel, (e) => e.tagName)) === "SELECT") await page.selectOption(sel, v);
      else await page.fill(sel, v);
    }
    await page.click(".rule-form button.save");
  };
  // Without the token the editor says so and writes nothing.
  await fill({ name: "disk_full", metric: "disk", threshold: "85", severity: "critical" });
  await page.waitForSelector(".rule-message.error", { timeout: WAIT });
  await page.fill(".rules-page input[name=api-token]", process.env.API_TOKEN);
  await page.click(".rules-page button.use-token");
  await page.waitForSelector(".rules-page button.forget-token", { timeout: WAIT });
  await fill({ threshold: "150" });
  await page.waitForSelector('.rule-form label[data-field="threshold"].invalid', { timeout: WAIT });
  step("invalid rule refused: " + (await page.$eval(".rule-message", (e) => e.textContent)));
  await page.screenshot({ path: join(shots, "rules-invalid.png"), fullPage: true });
  await fill({ threshold: "85", for: "5m", machines: "browser-*" });
  await page.waitForSelector('table.rules tr[data-rule="disk_full"]', { timeout: WAIT });
  await fill({ name: "load_high", metric: "load1_per_core", threshold: "2", severity: "warning", machines: "*", for: "1m" });
  await page.waitForSelector('table.rules tr[data-rule="load_high"]', { timeout: WAIT });
  await page.click('table.rules tr[data-rule="disk_full"] button.edit');
  await page.waitForSelector(".rule-form input[name=name][readonly]", { timeout: WAIT });
  await page.fill(".rule-form [name=threshold]", "80");
  await page.fill(".rule-form [name=clear]", "75");
  await page.click(".rule-form button.save");
  await page.waitForFunction(
    () => (document.querySelector('table.rules tr[data-rule="disk_full"]')?.textContent || "").includes("disk > 80"),
    null,
    { timeout: WAIT }
  );
  await page.click('table.rules tr[data-rule="load_high"] button.remove');
  await page.waitForFunction(() => !document.querySelector('table.rules tr[data-rule="load_high"]'), null, { timeout: WAIT });
  // Listed from the server, not only from the page's memory.
  await page.reload({ waitUntil: "load" });
  await page.waitForSelector('table.rules tr[data-rule="disk_full"]', { timeout: WAIT });
  step("rules listed: " + (await page.$eval("table.rules tbody", (e) => e.textContent.replace(/\s+/g, " ").trim())));
  await page.screenshot({ path: join(shots, "rules.png"), fullPage: true });

  if (errors.length) throw new Error("errors in the page:\n" + errors.join("\n"));
  console.log("browser test passed; screenshots in " + shots);
} catch (e) {
  failed = true;
  console.error("browser test failed: " + (e.stack || e));
  try {
    await ctx.pages()[0].screenshot({ path: join(shots, "failure.png"), fullPage: true });
  } catch {}
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
  lines.close();
}
process.exit(failed ? 1 : 0);
