// Drives the worker's console in Debian's Chromium as a tenant would, and checks each page with
// axe-core. The integration test `console` starts the worker and its functions, then runs this
// with:
//   FNHOST_URL        the worker's URL
//   FNHOST_TOKEN      tenant acme's token (acme has `sessions`, session-duration over `events`)
//   OTHER_FUNCTION    a function of another tenant, which must not show
//   ARTIFACTS         where screenshots go
//   CHROMIUM          the browser (default /usr/bin/chromium)
// It exits non-zero, saying why, if a step fails, the page logs an error or axe finds a serious
// violation.

import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const { FNHOST_URL: url, FNHOST_TOKEN: token, OTHER_FUNCTION: other, ARTIFACTS: artifacts } = process.env;
const STEP_MS = 60_000;

mkdirSync(artifacts, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // Root in a container has no user namespaces for Chromium's sandbox.
  args: ["--no-sandbox", "--disable-gpu"],
});
const problems = [];
let failed = null;
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
try {
  page.setDefaultTimeout(STEP_MS);
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));

  const check = async (name) => {
    await page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: true });
    await page.evaluate(axeSource);
    const result = await page.evaluate(() => globalThis.axe.run(document, { resultTypes: ["violations"] }));
    for (const violation of result.violations) {
      if (violation.impact === "serious" || violation.impact === "critical") {
        const where = violation.nodes.map((node) => node.target.join(" ")).join("; ");
        problems.push(`axe on ${name}: ${violation.id} (${violation.impact}): ${violation.help} at ${where}`);
      }
    }
  };
  const produce = async (events) => {
    const messages = events.map((event) => ({ payload: Buffer.from(JSON.stringify(event)).toString("base64") }));
    const response = await fetch(`${url}/topics/persistent/acme/default/events`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ messages }),
    });
    if (!response.ok) throw new Error(`produce: HTTP ${response.status} ${await response.text()}`);
  };
  const count = async (name) => Number((await page.locator(`[data-count="${name}"]`).textContent()).replaceAll(",", ""));

  // Sign in with the tenant's token.
  await page.goto(`${url}/console`);
  await page.locator("#token").waitFor();
  await check("sign-in");
  await page.fill("#token", token);
  await page.click("#sign-in button");

  // The tenant's function shows, another tenant's does not, and the tenant is fixed.
  await page.locator('tr[data-function="sessions"]').waitFor();
  if (await page.locator(`tr[data-function="${other}"]`).count()) throw new Error(`another tenant's ${other} shows`);
  if ((await page.inputValue("#scope-tenant")) !== "acme") throw new Error("the tenant shown is not acme");
  if (!(await page.locator("#scope-tenant").evaluate((input) => input.readOnly))) throw new Error("a tenant could change its tenant");
  await check("functions");

  // One function: its counts move as messages come.
  await page.click('tr[data-function="sessions"] a');
  await page.locator('[data-count="received"]').waitFor();
  const before = await count("received");
  await produce([
    { user_id: "ada", event_type: "login", timestamp: 1700000000 },
    { user_id: "bob", event_type: "login", timestamp: 1700000100 },
  ]);
  await page.waitForFunction(
    (before) => Number(document.querySelector('[data-count="received"]')?.textContent.replaceAll(",", "")) >= before + 2,
    before,
  );

  // Its live log shows the lines those messages wrote.
  await page.locator("#log li", { hasText: "User bob logged in at 1700000100" }).waitFor();

  // Its state: list the keys, open one.
  await page.click("#state button[type=submit]");
  await page.locator("#state-keys button", { hasText: "bob" }).click();
  await page.locator("#state-value", { hasText: "1700000100" }).waitFor();

  // Trigger it, and see its output.
  await page.fill("#trigger-value", JSON.stringify({ user_id: "ada", event_type: "logout", timestamp: 1700000600 }));
  await page.click("#trigger button[type=submit]");
  await page.locator("#trigger-output", { hasText: '"duration":600' }).waitFor();
  await check("function");

  // Topics, with backlog and retention, and a subscription's cursor reset.
  await page.click("nav >> text=Topics");
  await page.locator('tr[data-topic="events"]').waitFor();
  await page.locator("#retention", { hasText: "Retention: " }).waitFor();
  await page.locator('tr[data-topic="events"] button', { hasText: "Reset cursor" }).first().click();
  await page.locator("#status", { hasText: "now starts at" }).waitFor();
  await check("topics");

  // The cluster page says this worker is not in one, without asking what a tenant may not see.
  await page.goto(`${url}/console#/cluster`);
  await page.locator("#cluster", { hasText: "not in a cluster" }).waitFor();
  await check("cluster");
} catch (error) {
  failed = error;
  // What the page showed when the step failed, and what it said.
  await page.screenshot({ path: `${artifacts}/failed.png`, fullPage: true }).catch(() => {});
  problems.push(`the page's status line: ${await page.locator("#status").textContent().catch(() => "?")}`);
} finally {
  await browser.close();
}
if (failed) problems.unshift(`step failed: ${failed.stack ?? failed}`);
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`console checked; screenshots in ${artifacts}`);
