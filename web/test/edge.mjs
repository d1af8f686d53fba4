// The edge dashboard's browser check: Playwright (npm playwright-core)
// drives Debian's chromium against a running `sysmonstm-gateway --edge`.
// Run by services/gateway/tests/browser.rs, which starts a hub and an edge
// linked by a leaf node, publishes at the hub, and serves the edge gateway
// with an allow-list.
//
// env: BASE_URL, CHROMIUM_BIN, SCREENSHOTS (dir), MACHINE (the public name
//      shown), HIDDEN (comma list of names that must never appear).
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const base = process.env.BASE_URL;
const shots = process.env.SCREENSHOTS;
const machine = process.env.MACHINE;
const hidden = (process.env.HIDDEN || "").split(",").filter(Boolean);
const WAIT = 30000;
const step = (s) => console.log("step: " + s);

mkdirSync(shots, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "sysmonstm-chromium-edge-"));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const errors = [];
let failed = false;
try {
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.on("pageerror", (e) => errors.push("page error: " + e.message));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push("console: " + m.text());
  });
  const clean = async (where) => {
    const text = await page.evaluate(() => document.body.innerText + document.body.innerHTML);
    for (const h of hidden) if (text.includes(h)) throw new Error(`${where} shows the hidden ${h}`);
  };

  // The overview: the machine's card, live, and nothing to write with.
  await page.goto(base + "/", { waitUntil: "load" });
  await page.waitForSelector(`.card.online[data-machine="${machine}"]`, { timeout: WAIT });
  const seq = async () => Number(await page.$eval(`.card[data-machine="${machine}"]`, (c) => c.dataset.seq || 0));
  const first = await seq();
  await page.waitForFunction(
    ({ machine, first }) => Number(document.querySelector(`.card[data-machine="${machine}"]`).dataset.seq || 0) > first,
    { machine, first },
    { timeout: WAIT }
  );
  step(`card of ${machine} online and updating (seq ${first} → ${await seq()})`);
  if (!(await page.evaluate(() => document.body.classList.contains("read-only")))) throw new Error("the page does not know it is read-only");
  if (await page.isVisible("a.nav-rules")) throw new Error("the rules editor is offered");
  if (!(await page.isVisible(".read-only-badge"))) throw new Error("no read-only mark");
  if ((await page.$$("button.save, button.remove, button.edit, button.ack, input[name=api-token]")).length) throw new Error("a write control is shown");
  await clean("the overview");
  step("read-only: no rules link, no write control, the mark shown");

  // The machine page with its history from the edge's window.
  await page.click(`.card[data-machine="${machine}"]`);
  await page.waitForFunction(() => Number(document.querySelector(".chart.live[data-chart=cpu]")?.dataset.points || 0) >= 3, null, {
    timeout: WAIT,
  });
  // The history chart is loaded on entry and on a click: again until it
  // spans more than one step (the agents started seconds ago).
  const historyPoints = () => page.$eval(".history", (e) => Number(e.dataset.points || 0));
  for (const until = Date.now() + WAIT; (await historyPoints()) < 2; ) {
    if (Date.now() > until) throw new Error("the history chart never held two points");
    await page.waitForTimeout(1000);
    await page.click('button[data-range="1h"]');
  }
  step("history: " + (await page.$eval(".history-note", (e) => e.textContent)));
  await page.waitForSelector(".tables table.filesystems", { timeout: WAIT });
  if (await page.$(".tables table.top-cpu, .tables table.top-mem")) throw new Error("the public page lists the machine's processes");
  step("the machine's tables, without its processes");
  await clean("the machine page");
  await page.screenshot({ path: join(shots, "edge.png"), fullPage: true });

  // /rules at the edge is not the editor.
  await page.goto(base + "/rules", { waitUntil: "load" });
  await page.waitForSelector(`.card[data-machine="${machine}"]`, { timeout: WAIT });
  if (await page.$(".rules-page")) throw new Error("the rules editor opens at the edge");
  step("/rules shows the overview");

  if (errors.length) throw new Error("errors in the page:\n" + errors.join("\n"));
  console.log("edge browser test passed; screenshot in " + join(shots, "edge.png"));
} catch (e) {
  failed = true;
  console.error("edge browser test failed: " + (e.stack || e));
  try {
    await ctx.pages()[0].screenshot({ path: join(shots, "edge-failure.png"), fullPage: true });
  } catch {}
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
