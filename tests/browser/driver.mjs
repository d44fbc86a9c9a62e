// Drives headless Chromium (the system browser, via playwright-core) for tests/mcp_server/test_dashboard_browser.py.
// Protocol: one JSON command per line on stdin, one JSON reply per line on stdout ({ok: true, ...} or {ok: false, error}).
//   start {url, chromium}  open the test host page on the server's origin and render the dashboard
//   read                   what the dashboard shows (status text, update, curve points, ...)
//   wait {until, timeout_s} poll `read` until the JS expression `until` (over `r`) is true
//   click {selector}       click a control inside the app
//   screenshot {path}      PNG of the app's frame in the host page
//   quit
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const here = new URL(".", import.meta.url).pathname;
let browser, page, app;
const appRequests = [];
const consoleErrors = [];

async function start({ url, chromium: executablePath }) {
  browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox", "--disable-gpu"] });
  page = await browser.newPage({ viewport: { width: 1100, height: 900 }, deviceScaleFactor: 1 });
  const origin = new URL(url).origin;
  // The host page is served on the server's own origin, so the page's MCP client talks to /mcp same-origin.
  await page.route(`${origin}/__host/**`, (route) => {
    const path = new URL(route.request().url()).pathname.replace("/__host/", "");
    const file = { "host.html": "host.html", "dist/host.js": "dist/host.js" }[path];
    if (!file) return route.fulfill({ status: 404, body: "not found" });
    return route.fulfill({ body: readFileSync(here + file), contentType: file.endsWith(".js") ? "text/javascript" : "text/html" });
  });
  page.on("request", (req) => { if (req.frame() !== page.mainFrame()) appRequests.push(req.url()); });
  page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(msg.text()); });
  page.on("pageerror", (err) => consoleErrors.push(String(err)));
  await page.goto(`${origin}/__host/host.html`);
  const opened = await page.evaluate((args) => window.openDashboard(args), {});
  app = page.frameLocator("#app");
  await app.locator("#status").waitFor();
  return opened;
}

async function read() {
  const frame = page.frame({ url: /^about:srcdoc/ }) || page.frames().find((f) => f !== page.mainFrame());
  return frame.evaluate(() => {
    const q = (s) => document.querySelector(s);
    const text = (s) => (q(s) ? q(s).textContent.trim() : null);
    const pairs = (s) => { const a = q(s) && q(s).getAttribute("points"); return a ? a.trim().split(/\s+/).length : 0; };
    return {
      status: text("#status"),
      job: (text("#progress-text") || "").split(" ")[0] || null,
      update: q("#update") ? Number(q("#update").textContent) : null,
      points: pairs("#train-line"),
      lr_points: pairs("#lr-line"),
      cp_points: pairs("#cp-line"),
      val_points: document.querySelectorAll("#val-points circle").length,
      baselines: [...document.querySelectorAll("#loss-chart .baseline")].map((l) => l.dataset.name),
      checkpoints: [...document.querySelectorAll("#checkpoints tr.checkpoint")].map((tr) => tr.dataset.name),
      gate: text("#gate-state"),
      telemetry: [...document.querySelectorAll("#telemetry td[data-key]")].map((td) => td.dataset.key),
      eta: text("#eta"),
      msg: text("#msg"),
      eval: text("#eval-bpb"),
      cancel_enabled: !q("#cancel").disabled,
      resume_enabled: !q("#resume").disabled,
      evaluate_enabled: !q("#evaluate").disabled,
    };
  });
}

async function wait({ until, timeout_s = 120 }) {
  const pred = new Function("r", `return (${until});`);
  const deadline = Date.now() + timeout_s * 1000;
  let r;
  for (;;) {
    r = await read();
    if (pred(r)) return { r };
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout_s} s waiting for ${until}; last: ${JSON.stringify(r)}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

const commands = {
  start,
  read: async () => ({ r: await read() }),
  wait,
  click: async ({ selector }) => { await app.locator(selector).click(); return {}; },
  screenshot: async ({ path }) => { await page.locator("#frame").screenshot({ path }); return {}; },
  diagnostics: async () => ({ appRequests, consoleErrors }),
  quit: async () => { if (browser) await browser.close(); process.exit(0); },
};

const rl = createInterface({ input: process.stdin });
for await (const line of rl) {
  if (!line.trim()) continue;
  let reply;
  try {
    const msg = JSON.parse(line);
    reply = { ok: true, ...(await commands[msg.cmd](msg)) };
  } catch (err) {
    reply = { ok: false, error: String(err && err.stack || err) };
  }
  process.stdout.write(JSON.stringify(reply) + "\n");
}
if (browser) await browser.close();
