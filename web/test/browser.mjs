// The browser test's driver: Playwright (npm playwright-core) drives
// Debian's chromium against a running gateway while real agents publish.
// Run by services/gateway/tests/browser.rs, which starts the hub, the
// gateway and three agents, and publishes a firing AlertEvent when this
// script prints "waiting-for-alert" (it answers on stdin).
//
// It then prints "waiting-for-silence" (the test puts a silence of that
// alert in the silences bucket: it shows muted until the silence's end) and
// "waiting-for-resolve" (the test publishes the alert's resolution).
//
// env: BASE_URL, CHROMIUM_BIN, SCREENSHOTS (dir), MACHINES (comma list),
//      ALERT (machine:rule expected to fire), API_TOKEN (the gateway's token,
//      typed into the rules editor), HISTORY_MACHINE (the machine with an
//      hour of stored history, one row a second, CPU 10–40 %),
//      STORED_ALERT (machine:rule of a stored resolved event),
//      MEM_TOTAL_BYTES (this machine's memory, as the agents report it),
//      OS_NAME (this machine's distribution name, /etc/os-release NAME).
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { bytes } from "../src/format.js";

const base = process.env.BASE_URL;
const shots = process.env.SCREENSHOTS;
const machines = process.env.MACHINES.split(",");
const alertKey = process.env.ALERT;
const storedAlertKey = process.env.STORED_ALERT;
const historyMachine = process.env.HISTORY_MACHINE;
const memTotal = Number(process.env.MEM_TOTAL_BYTES);
const osName = process.env.OS_NAME || "";
const WAIT = 30000;
const check = (ok, what) => {
  if (!ok) throw new Error(what);
};

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
  // Numbers a person would believe: percentages within 0–100 (memory in
  // use is never 0), three load averages, none negative.
  const cards = await page.$$eval(".card[data-machine]", (cs) =>
    cs.map((c) => ({
      machine: c.dataset.machine,
      cpu: c.querySelector(".m-cpu .value").textContent,
      memory: c.querySelector(".m-memory .value").textContent,
      disk: c.querySelector(".m-disk .value").textContent,
      load: c.querySelector(".m-load .value").textContent,
    }))
  );
  for (const c of cards) {
    for (const k of ["cpu", "memory", "disk"]) {
      const m = c[k].match(/^(\d+(?:\.\d+)?) %$/);
      check(m && Number(m[1]) >= 0 && Number(m[1]) <= 100, `${c.machine}: ${k} is not a percentage: ${JSON.stringify(c[k])}`);
    }
    check(Number(c.memory.split(" ")[0]) > 0, `${c.machine}: no memory in use: ${c.memory}`);
    const load = c.load.trim().split(/\s+/).map(Number);
    check(load.length === 3 && load.every((x) => Number.isFinite(x) && x >= 0), `${c.machine}: load ${JSON.stringify(c.load)}`);
  }
  step("cards update: " + JSON.stringify(first) + " → " + JSON.stringify(await seqs()) + "; " + JSON.stringify(cards[0]));
  await page.screenshot({ path: join(shots, "overview.png"), fullPage: true });

  // The toolbar: how many machines, online, silent, alerting.
  const countsLine = () => page.$eval(".overview-bar .counts", (e) => e.textContent);
  await page.waitForFunction(
    (n) => document.querySelector(".overview-bar .counts")?.textContent === `${n} machines · ${n} online · 0 silent · 0 alerting`,
    machines.length,
    { timeout: WAIT }
  );
  step("counts: " + (await countsLine()));

  // A cap on the cards drawn (?limit= sets it, for a small one here), and
  // "Show more" raises it.
  const cardCount = () => page.$$eval(".card[data-machine]", (cs) => cs.length);
  await page.goto(base + "/?limit=2", { waitUntil: "load" });
  await page.waitForFunction((n) => document.querySelector(".overview-more .showing")?.textContent.startsWith(`Showing 2 of ${n} matching`), machines.length, {
    timeout: WAIT,
  });
  check((await cardCount()) === 2, `?limit=2 drew ${await cardCount()} cards`);
  const showing = await page.$eval(".overview-more .showing", (e) => e.textContent);
  await page.screenshot({ path: join(shots, "overview-cap.png"), fullPage: true });
  await page.click(".overview-more button.show-more");
  await page.waitForFunction((n) => document.querySelectorAll(".card[data-machine]").length === n, machines.length, { timeout: WAIT });
  check(await page.isHidden(".overview-more"), "the Show more line stays with every card drawn");
  await page.waitForFunction((n) => new URL(location.href).searchParams.get("limit") === String(n), machines.length, { timeout: WAIT });
  await page.reload({ waitUntil: "load" });
  await page.waitForFunction((n) => document.querySelectorAll(".card[data-machine]").length === n, machines.length, { timeout: WAIT });
  check(await page.isHidden(".overview-more"), "the cap Show more raised was lost over a reload");
  step(`cap: "${showing}", then ${await cardCount()} cards after Show more, in the URL (${new URL(page.url()).search}) and kept over a reload`);

  // The filter: hostile text is echoed as text; a machine's name, typed key
  // by key while updates arrive, leaves exactly its card, keeps focus and
  // caret, and goes into the URL.
  const hostile = '"><img src=x id=injected>';
  await page.fill(".overview-bar input.filter", hostile);
  await page.waitForFunction((h) => document.querySelector("#overview .empty")?.textContent.includes(h), hostile, { timeout: WAIT });
  check(!(await page.$("#injected")), "the filter text was rendered as markup");
  await page.fill(".overview-bar input.filter", "");
  const target = machines[machines.length - 1];
  const typed = target.toUpperCase();
  await page.type(".overview-bar input.filter", typed, { delay: 120 });
  const oneCard = (m) => {
    const cs = [...document.querySelectorAll(".card[data-machine]")];
    return cs.length === 1 && cs[0].dataset.machine === m;
  };
  await page.waitForFunction(oneCard, target, { timeout: WAIT });
  const focus = await page.evaluate(() => {
    const e = document.activeElement;
    return { focused: e?.matches(".overview-bar input.filter"), value: e?.value, caret: e?.selectionStart };
  });
  check(focus.focused && focus.value === typed && focus.caret === typed.length, "typing lost focus or caret: " + JSON.stringify(focus));
  check(new URL(page.url()).searchParams.get("q") === typed, "the filter is not in the URL: " + page.url());
  await page.reload({ waitUntil: "load" });
  await page.waitForFunction(oneCard, target, { timeout: WAIT });
  const kept = await page.$eval(".overview-bar input.filter", (e) => e.value);
  check(kept === typed, "the filter after a reload: " + JSON.stringify(kept));
  step(`filter ${JSON.stringify(typed)}: only ${target}, in the URL (${new URL(page.url()).search}), kept over a reload`);
  await page.screenshot({ path: join(shots, "overview-filter.png"), fullPage: true });
  await page.goto(base + "/", { waitUntil: "load" });
  for (const m of machines) await page.waitForSelector(`.card[data-machine="${m}"]`, { timeout: WAIT });

  // A firing alert appears in the panel as it is published.
  console.log("waiting-for-alert");
  await nextLine();
  await page.waitForSelector(`li.alert[data-alert="${alertKey}"]`, { timeout: WAIT });
  step("firing alert shown: " + (await page.$eval(`li.alert[data-alert="${alertKey}"]`, (e) => e.textContent.replace(/\s+/g, " ").trim())));
  // "Needs attention" puts the machine with the firing alert first (by
  // name it is not), and the counts say one machine is alerting.
  const alertMachine = alertKey.split(":")[0];
  check((await page.$eval(".card[data-machine]", (c) => c.dataset.machine)) !== alertMachine, "the alerting machine is first by name already");
  await page.selectOption(".overview-bar select[name=sort]", "attention");
  await page.waitForFunction((m) => document.querySelector(".card[data-machine]")?.dataset.machine === m, alertMachine, { timeout: WAIT });
  check(new URL(page.url()).searchParams.get("sort") === "attention", "the sort is not in the URL: " + page.url());
  await page.waitForFunction(() => document.querySelector(".overview-bar .counts")?.textContent.endsWith(" · 1 alerting"), null, { timeout: WAIT });
  step(`needs attention: ${alertMachine} first; ${await countsLine()}`);
  await page.waitForSelector(`.recent tr[data-alert="${alertKey}"][data-state="firing"]`, { timeout: WAIT });
  await page.waitForSelector(`.recent tr[data-alert="${storedAlertKey}"][data-state="resolved"]`, { timeout: WAIT });
  await page.screenshot({ path: join(shots, "overview-alert.png"), fullPage: true });
  // The events table (a live event and a stored one of a machine with a long
  // name) fits inside its panel: nothing sticks out on the right.
  const fit = await page.$eval(".alerts", (panel) => {
    const p = panel.getBoundingClientRect();
    const t = panel.querySelector(".recent table").getBoundingClientRect();
    const cells = [...panel.querySelectorAll(".recent td, .recent th")];
    const wide = cells.filter((c) => c.getBoundingClientRect().right > p.right + 0.5).length;
    // Nor does a cell's text run into its neighbour.
    const spilling = cells.filter((c) => c.scrollWidth > c.clientWidth + 1).map((c) => c.textContent.trim());
    return { panelRight: p.right, tableRight: t.right, cellsOutside: wide, spilling };
  });
  check(fit.tableRight <= fit.panelRight && fit.cellsOutside === 0 && fit.spilling.length === 0, "the events table overflows its panel: " + JSON.stringify(fit));
  step("events table fits its panel: " + JSON.stringify(fit));

  // A silence of the firing alert: still listed, greyed, "muted until
  // HH:MM", not in the count of what needs a person; its event too.
  console.log("waiting-for-silence");
  await nextLine();
  const mutedSel = `li.alert.muted[data-alert="${alertKey}"] .muted-badge`;
  await page.waitForSelector(mutedSel, { timeout: WAIT });
  const badge = await page.$eval(mutedSel, (e) => e.textContent.trim());
  check(/^muted until (\d\d-\d\d )?\d\d:\d\d$/.test(badge), "muted badge reads " + JSON.stringify(badge));
  await page.waitForSelector(`.recent tr.muted[data-alert="${alertKey}"][data-state="firing"] .muted-badge`, { timeout: WAIT });
  const counts = await page.$$eval(".alerts h3 .count", (es) => es.map((e) => e.textContent));
  check(counts[0] === "0" && counts[1] === "+1 muted", "firing counts with a muted alert: " + JSON.stringify(counts));
  // The overview agrees: nobody needs to look at it, it is counted apart.
  await page.waitForFunction(() => document.querySelector(".overview-bar .counts")?.textContent.endsWith(" · 0 alerting · 1 muted"), null, { timeout: WAIT });
  step("muted alert shown: " + badge + ", counts " + JSON.stringify(counts));
  await page.screenshot({ path: join(shots, "overview-muted.png"), fullPage: true });

  // The alert resolves: it leaves "Firing now", its resolution is an event.
  console.log("waiting-for-resolve");
  await nextLine();
  await page.waitForSelector(`li.alert[data-alert="${alertKey}"]`, { state: "detached", timeout: WAIT });
  await page.waitForSelector(`.recent tr[data-alert="${alertKey}"][data-state="resolved"]`, { timeout: WAIT });
  const firingCount = await page.$eval(".alerts h3 .count", (e) => e.textContent);
  check(firingCount === "0", "still counted as firing: " + firingCount);
  await page.waitForFunction(() => document.querySelector(".overview-bar .counts")?.textContent.endsWith(" · 0 alerting"), null, { timeout: WAIT });
  step("alert resolved: nothing firing, event listed, " + (await countsLine()));
  await page.screenshot({ path: join(shots, "overview-resolved.png"), fullPage: true });

  // The machine page of the machine with stored history: opened fresh, the
  // live charts start from the stored last five minutes (one row a second),
  // not from the one snapshot the page has.
  await page.click(`.card[data-machine="${historyMachine}"]`);
  await page.waitForSelector(".chart.live[data-chart=cpu]", { timeout: WAIT });
  await page.waitForFunction(() => Number(document.querySelector(".chart.live[data-chart=cpu]").dataset.points) >= 150, null, {
    timeout: 10000,
  });
  const livePoints = await page.$eval(".chart.live[data-chart=cpu]", (e) => Number(e.dataset.points));
  // Drawn, not only created: the canvas holds non-background pixels of the series colour.
  const drawn = await page.$eval(".chart.live[data-chart=cpu] canvas", (c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i + 2] > 200 && d[i] < 120) n++;
    return n;
  });
  check(drawn >= 200, "the CPU chart drew no line (" + drawn + " pixels)");
  // The time axis reads as clock time in whole seconds or minutes, never
  // ":20.500".
  for (const chart of ["cpu", "memory", "load", "net"]) {
    const ticks = await page.$eval(`.chart.live[data-chart=${chart}]`, (e) => e.dataset.ticks || "");
    check(ticks && ticks.split(" ").every((t) => /^\d\d:\d\d(:\d\d)?$/.test(t)), `${chart} chart's time axis: ${JSON.stringify(ticks)}`);
  }
  const ticks = await page.$eval(".chart.live[data-chart=cpu]", (e) => e.dataset.ticks);
  // The facts are this machine's: its memory, its OS named once.
  await page.waitForSelector(".facts dd.memory", { timeout: WAIT });
  const facts = await page.$eval(".facts", (f) => ({ os: f.querySelector("dd.os").textContent, memory: f.querySelector("dd.memory").textContent }));
  check(facts.memory === bytes(memTotal), `memory ${facts.memory}, this machine has ${bytes(memTotal)}`);
  if (osName) check(facts.os.split(osName).length === 2, `OS line ${JSON.stringify(facts.os)} does not name ${osName} once`);
  await page.waitForSelector(".tables table.filesystems tbody tr", { timeout: WAIT });
  await page.waitForSelector(".tables table.top-cpu tbody tr", { timeout: WAIT });
  // The history chart: the stored hour, in 5 s steps (~720 points), drawn.
  await page.waitForFunction(() => Number(document.querySelector(".history.chart").dataset.points) >= 600, null, { timeout: WAIT });
  const historyDrawn = await page.$eval(".history.chart canvas", (c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i + 2] > 200 && d[i] < 120) n++;
    return n;
  });
  check(historyDrawn >= 200, "the history chart drew no line (" + historyDrawn + " pixels)");
  step(
    `machine page: live chart starts with ${livePoints} points (ticks ${ticks}), ${drawn} line pixels; ` +
      `history ${await page.$eval(".history-note", (e) => e.textContent)}, ${historyDrawn} line pixels; facts ${JSON.stringify(facts)}`
  );
  await page.screenshot({ path: join(shots, "machine.png"), fullPage: true });

  // The history view zooms: every range shows the stored hour (from the
  // rollups beyond the raw range).
  for (const r of ["24h", "7d", "30d", "1h"]) {
    await page.click(`button[data-range="${r}"]`);
    await page.waitForFunction((r) => document.querySelector(".history .u-title")?.textContent.endsWith(r), r, { timeout: WAIT });
    const points = await page.$eval(".history.chart", (e) => Number(e.dataset.points));
    check(points >= 1, `history ${r}: no points`);
    step(`history ${r}: ` + (await page.$eval(".history-note", (e) => e.textContent)));
  }

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

  // A tab whose overview is out of sight for 30 s pauses its feed and gets
  // nothing while the machines go on; back in sight, it resumes live. The
  // page's clock is Playwright's, running at its own pace until the 30 s
  // are skipped.
  const bg = await ctx.newPage();
  bg.on("pageerror", (e) => errors.push("page error (background tab): " + e.message));
  await bg.clock.install();
  await bg.clock.resume();
  const sent = [];
  const got = [];
  bg.on("websocket", (ws) => {
    ws.on("framesent", (f) => sent.push(String(f.payload)));
    ws.on("framereceived", (f) => got.push(String(f.payload)));
  });
  await bg.goto(base + "/", { waitUntil: "load" });
  await bg.waitForSelector(`.card[data-machine="${machines[0]}"]`, { timeout: WAIT });
  const setHidden = (hidden) =>
    bg.evaluate((hidden) => {
      Object.defineProperty(document, "visibilityState", { value: hidden ? "hidden" : "visible", configurable: true });
      Object.defineProperty(document, "hidden", { value: hidden, configurable: true });
      document.dispatchEvent(new Event("visibilitychange"));
    }, hidden);
  await setHidden(true);
  await bg.clock.fastForward(29000);
  check(!sent.includes('{"type":"pause"}'), "paused before 30 s out of sight: " + JSON.stringify(sent));
  await bg.clock.fastForward(2000);
  const deadline = Date.now() + WAIT;
  while (!sent.includes('{"type":"pause"}') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  check(sent.includes('{"type":"pause"}'), "no pause sent after 31 s out of sight: " + JSON.stringify(sent));
  const gotAtPause = got.length;
  // The gateway has moved two snapshots on since (so it has sent anything it
  // was going to send for the first), and the hidden tab got none of them.
  const latestSeq = async () => {
    const r = await fetch(`${base}/api/machines/${machines[0]}/metrics`);
    return (await r.json()).seq;
  };
  const seqAtPause = await latestSeq();
  while ((await latestSeq()) < seqAtPause + 2) {
    check(Date.now() < deadline, "the machines stopped publishing");
    await new Promise((r) => setTimeout(r, 100));
  }
  const whilePaused = got.slice(gotAtPause).filter((m) => !m.includes('"type":"forget"') || m.includes('"type":"summary"'));
  check(whilePaused.length === 0, "a paused tab got " + whilePaused.join(" ").slice(0, 300));
  await setHidden(false);
  await bg.waitForFunction(
    ({ m, seq }) => Number(document.querySelector(`.card[data-machine="${m}"]`)?.dataset.seq || 0) > seq,
    { m: machines[0], seq: seqAtPause + 2 },
    { timeout: WAIT }
  );
  step(`background tab: pause sent after 30 s hidden, nothing received over 2 snapshots, live again when shown (${sent.slice(-2).join(" ")})`);
  await bg.close();

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
