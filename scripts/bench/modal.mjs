// How long the TokenUsageModal takes to show data, in Debian's Chromium (issue 6: < 1 s after
// opening). Logs in as an admin, then for random users: opens /users filtered to the user,
// clicks "View usage of …" and waits until the stat cards show numbers and the chart's canvas
// is drawn. Prints every time and the median and worst.
//
//   node scripts/bench/modal.mjs BASE_URL ADMIN_ID ADMIN_PASSWORD USERS [ROUNDS]
//
// Needs the release site (`cargo leptos build --release`) served with LEPTOS_SITE_ROOT and
// end2end's npm packages (`make setup`).
import { createRequire } from "node:module";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const require = createRequire(path.join(root, "end2end/package.json"));
const { chromium } = require("@playwright/test");

const [base, adminId, password, users, rounds = "10"] = process.argv.slice(2);
if (!base || !adminId || !password || !users) {
  console.error("usage: modal.mjs BASE_URL ADMIN_ID ADMIN_PASSWORD USERS [ROUNDS]");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
const page = await browser.newPage();
page.setDefaultTimeout(30_000);
await page.goto(`${base}/login`);
await page.locator('main[data-hydrated="true"]').waitFor();
await page.getByLabel("User id").fill(adminId);
await page.getByLabel("Password").fill(password);
await page.getByRole("button", { name: "Log in" }).click();
await page.getByTestId("whoami").waitFor();

const chartDrawn = () => {
  const canvas = document.querySelector("#usage-chart canvas");
  if (!canvas || canvas.width === 0) return false;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
  return painted > 500;
};

const times = [];
for (let round = 0; round < Number(rounds); round++) {
  const user = `u${Math.floor(Math.random() * Number(users))}`;
  await page.goto(`${base}/users?q=${user}`);
  await page.locator('main[data-hydrated="true"]').waitFor();
  const opener = page.getByRole("button", { name: `View usage of ${user}`, exact: true });
  await opener.waitFor();
  const started = performance.now();
  await opener.click();
  const dialog = page.getByRole("dialog");
  await dialog.getByTestId("card-total").filter({ hasText: /\d/ }).waitFor();
  await page.waitForFunction(chartDrawn);
  const ms = performance.now() - started;
  times.push(ms);
  console.log(`${user}: data and chart shown ${ms.toFixed(0)} ms after the click`);
  await dialog.getByRole("button", { name: "Close" }).click();
}
await browser.close();
times.sort((a, b) => a - b);
console.log(
  `modal: ${times.length} openings, median ${times[Math.floor(times.length / 2)].toFixed(0)} ms, ` +
    `worst ${times[times.length - 1].toFixed(0)} ms`,
);
