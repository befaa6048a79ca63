// The dashboard page in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core; no browser is downloaded). Run by tests/it/ops/dashboard.rs while
// traffic flows:
//   node dashboard.mjs URL SCREENSHOT CLIENT_TO_KICK
// Loads the page, waits for live numbers to move, saves a screenshot and inspects its
// pixels (decoded by the browser itself), kicks CLIENT_TO_KICK with the page's button,
// and prints one JSON line of what it saw. Exits 1 with the reason if anything fails.
import { chromium } from "playwright-core";

const [url, screenshot, victim] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

function number(text) {
  const m = /^([\d.,]+)([kMG]?)$/.exec(text.trim());
  if (!m) return NaN;
  const scale = { "": 1, k: 1e3, M: 1e6, G: 1e9 }[m[2]];
  return parseFloat(m[1].replace(/,/g, "")) * scale;
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", e => errors.push(e.message));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("status").textContent === "live", null, { timeout: 15000 });
  // Live numbers: clients connected, messages flowing in and out, a line drawn.
  await page.waitForFunction(() => {
    const n = id => parseFloat(document.getElementById(id).textContent.replace(/,/g, ""));
    const points = document.getElementById("in-line").getAttribute("points").trim().split(" ");
    return n("connections") >= 2 && n("rate-in") > 0 && n("rate-out") > 0 && points.length >= 4;
  }, null, { timeout: 30000, polling: 250 });
  const firstIn = number(await page.textContent("#rate-in"));
  // The numbers move: the rate chart gains points as snapshots come.
  const pointsBefore = (await page.getAttribute("#in-line", "points")).trim().split(" ").length;
  await page.waitForFunction(n => document.getElementById("in-line").getAttribute("points").trim().split(" ").length > n,
    pointsBefore, { timeout: 10000 });
  await page.waitForSelector(`button.kick[data-client="${victim}"]`, { timeout: 15000 });
  await page.waitForFunction(() => document.querySelectorAll("#top-topics tbody tr").length > 0, null, { timeout: 15000 });
  const topTopic = await page.textContent("#top-topics tbody tr td");
  const connections = number(await page.textContent("#connections"));
  await page.screenshot({ path: screenshot, fullPage: true });

  // Inspect the screenshot: decode it in the browser, count the pixels of the rate
  // line's colour and of the queue-depth bars' colour.
  const png = (await import("node:fs")).readFileSync(screenshot).toString("base64");
  const inspect = await browser.newPage();
  const pixels = await inspect.evaluate(async data => {
    const img = new Image();
    img.src = "data:image/png;base64," + data;
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.width;
    canvas.height = img.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, img.width, img.height).data;
    const near = (i, r, g, b) => Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40 && Math.abs(d[i + 2] - b) < 40;
    // The incoming rate is an area: #1f77b4 at a quarter over white.
    const tint = [0x1f, 0x77, 0xb4].map(c => Math.round(c * 0.25 + 255 * 0.75));
    const close = (i, [r, g, b]) => Math.abs(d[i] - r) < 10 && Math.abs(d[i + 1] - g) < 10 && Math.abs(d[i + 2] - b) < 10;
    let line = 0, area = 0, bars = 0, dark = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (near(i, 0x1f, 0x77, 0xb4)) line++;
      if (close(i, tint)) area++;
      if (near(i, 0x2a, 0x9d, 0x8f)) bars++;
      if (d[i] < 60 && d[i + 1] < 60 && d[i + 2] < 60) dark++;
    }
    return { width: img.width, height: img.height, line, area, bars, dark };
  }, png);
  if (pixels.area < 500) throw new Error(`the incoming rate's area is hardly in the screenshot: ${JSON.stringify(pixels)}`);
  if (pixels.bars < 150) throw new Error(`the queue depth bars are hardly in the screenshot: ${JSON.stringify(pixels)}`);
  if (pixels.dark < 1000) throw new Error(`no text in the screenshot: ${JSON.stringify(pixels)}`);

  // Kick: the row goes.
  page.on("dialog", d => { errors.push("dialog: " + d.message()); d.dismiss(); });
  await page.click(`button.kick[data-client="${victim}"]`);
  await page.waitForFunction(v => !document.querySelector(`button.kick[data-client="${v}"]`), victim, { timeout: 15000 });
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log(JSON.stringify({ ok: true, rate_in: firstIn, connections, top_topic: topTopic, pixels }));
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message || e) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
