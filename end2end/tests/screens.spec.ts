import { test, expect, type Page } from "@playwright/test";
import AxeBuilder from "@axe-core/playwright";
import { ADMIN, DEMO_USER, asAdmin, createUser, freshUserId, logIn, recordUsage, watchErrors } from "./helpers";

test("warnings appear at 75 %, 90 % and a blocking notice at 100 %, as usage arrives", async ({ page, request }) => {
  const admin = await asAdmin(request);
  const userId = freshUserId();
  await createUser(admin, { userId, tokenLimit: 1_000, password: "pw-for-warnings" });
  await recordUsage(admin, userId, 750);
  await logIn(page, userId, "pw-for-warnings");
  await expect(page.getByRole("status").filter({ hasText: "75 % or more" })).toBeVisible();
  await expect(page.getByTestId("usage-card")).toHaveAttribute("data-level", "warning");

  // Each change shows up within 6 s, without a reload.
  await recordUsage(admin, userId, 150);
  await expect(page.getByRole("status").filter({ hasText: "90 % or more" })).toBeVisible({ timeout: 6_000 });
  await expect(page.getByTestId("usage-card")).toHaveAttribute("data-level", "critical");

  await recordUsage(admin, userId, 100);
  const dialog = page.getByRole("dialog", { name: "Token limit reached" });
  await expect(dialog).toBeVisible({ timeout: 6_000 });
  await expect(dialog).toContainText("All 1,000 tokens");
  await expect(dialog.getByRole("button", { name: "I understand" })).toBeFocused();
  await page.keyboard.press("Escape");
  await expect(dialog).toHaveCount(0);
  await expect(page.getByRole("status").filter({ hasText: "You have used all your tokens" })).toBeVisible();
  await expect(page.getByTestId("tokens-remaining")).toHaveText("0");
  await expect(page.getByTestId("refreshed")).toContainText("Updated");
});

test("a refresh that fails is retried, then reported in a toast, and the numbers stay", async ({ page }) => {
  await logIn(page, DEMO_USER.userId, DEMO_USER.password);
  await expect(page.getByTestId("tokens-used")).toBeVisible();
  const before = await page.getByTestId("tokens-used").textContent();
  let attempts = 0;
  await page.route("**/rpc/get_user_usage", (route) => {
    attempts += 1;
    return route.abort("connectionrefused");
  });
  await expect(page.getByTestId("toast")).toContainText("Could not refresh", { timeout: 10_000 });
  expect(attempts).toBeGreaterThanOrEqual(3);
  await expect(page.getByTestId("tokens-used")).toHaveText(before ?? "");
  await page.unroute("**/rpc/get_user_usage");
});

// Reads one column of the user table as numbers (or text), in row order.
async function column(page: Page, index: number): Promise<(number | string)[]> {
  const cells = await page.locator("table.users tbody tr").evaluateAll(
    (rows, i) => rows.map((r) => (r.children[i] as HTMLElement).innerText.trim()),
    index,
  );
  return cells.map((c) => {
    const n = Number(c.replace(/[,%\s]/g, ""));
    return c !== "" && !Number.isNaN(n) ? n : c;
  });
}

function ordered(values: (number | string)[], dir: "ascending" | "descending", caseless: boolean): boolean {
  const norm = (v: number | string) => (typeof v === "string" && caseless ? v.toLowerCase() : v);
  for (let i = 1; i < values.length; i++) {
    const [a, b] = [norm(values[i - 1]), norm(values[i])];
    if (dir === "ascending" ? a > b : a < b) return false;
  }
  return true;
}

test("an admin sorts the user list by every column, both ways, and the header says so", async ({ page }) => {
  const errors = watchErrors(page);
  await logIn(page, ADMIN.userId, ADMIN.password);
  await expect(page).toHaveURL(/\/users$/);
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  const headers = ["User id", "Name", "Used", "Limit", "Remaining", "Used %", "Last updated"];
  for (const [index, label] of headers.entries()) {
    const header = page.locator("table.users thead th").nth(index);
    await expect(header).toContainText(label);
    for (const dir of ["ascending", "descending"] as const) {
      // The first click on a new column sorts ascending; the next one flips it.
      const current = await header.getAttribute("aria-sort");
      if (current !== dir) await header.getByRole("button").click();
      await expect(header).toHaveAttribute("aria-sort", dir);
      const values = await column(page, index);
      expect(values.length).toBeGreaterThan(3);
      expect(ordered(values, dir, label === "Name"), `${label} ${dir}: ${values.join(" | ")}`).toBe(true);
    }
  }
  // The sort lives in the address: a reload keeps it.
  await page.reload();
  await expect(page.getByRole("columnheader", { name: /^Last updated/ })).toHaveAttribute("aria-sort", "descending");
  expect(errors, `browser errors: ${errors.join("\n")}`).toEqual([]);
});

test("an admin filters the list, selects a user and goes on to change their limit", async ({ page }) => {
  await logIn(page, ADMIN.userId, ADMIN.password);
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  await page.getByLabel("Filter").fill("okafor");
  await expect(page.locator("table.users tbody tr")).toHaveCount(1);
  await expect(page.getByTestId("page-info")).toContainText("1 users");
  await page.getByRole("button", { name: "Show details of ben.okafor" }).click();
  const details = page.getByRole("complementary", { name: "Selected user" });
  await expect(details.getByRole("heading", { name: "Ben Okafor" })).toBeVisible();
  await expect(page).toHaveURL(/user=ben\.okafor/);
  await page.getByLabel("Filter").fill("no-such-person");
  await expect(page.getByText("No user matches this filter.")).toBeVisible();
  await details.getByRole("link", { name: "Change limit" }).click();
  await expect(page).toHaveURL(/\/limits\?user=ben\.okafor$/);
  await expect(page.getByTestId("current-usage")).toContainText("Ben Okafor");
});

test("an admin changes a limit: bad input is explained, lowering below usage asks first", async ({ page, request }) => {
  const admin = await asAdmin(request);
  const userId = freshUserId();
  await createUser(admin, { userId, tokenLimit: 10_000 });
  await recordUsage(admin, userId, 4_000);
  await logIn(page, ADMIN.userId, ADMIN.password);
  await page.goto(`/limits?user=${userId}`);
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  await expect(page.getByTestId("current-usage")).toContainText("Uses 4,000 of 10,000 tokens");

  const value = page.getByLabel("New limit (tokens)");
  for (const [input, message] of [
    ["lots", "whole number of tokens"],
    ["0", "must be a positive whole number"],
    ["", "Enter the new limit"],
  ]) {
    await value.fill(input);
    await page.getByRole("button", { name: "Set limit" }).click();
    await expect(page.getByRole("alert")).toContainText(message);
    await expect(value).toHaveAttribute("aria-invalid", "true");
  }
  await expect(page.getByTestId("current-usage")).toContainText("of 10,000 tokens");

  await value.fill("25,000");
  await page.getByRole("button", { name: "Set limit" }).click();
  await expect(page.getByRole("status").filter({ hasText: `The limit of ${userId} is now 25,000 tokens.` })).toBeVisible();
  await expect(page.getByTestId("current-usage")).toContainText("Uses 4,000 of 25,000 tokens");

  // Below what is used: a confirmation first; Cancel changes nothing.
  await value.fill("1000");
  await page.getByRole("button", { name: "Set limit" }).click();
  const dialog = page.getByRole("dialog", { name: "Lower the limit below current usage?" });
  await expect(dialog).toContainText("has already used 4,000 tokens");
  await dialog.getByRole("button", { name: "Cancel" }).click();
  await expect(dialog).toHaveCount(0);
  await expect(page.getByTestId("current-usage")).toContainText("of 25,000 tokens");
  await page.getByRole("button", { name: "Set limit" }).click();
  await dialog.getByRole("button", { name: "Lower the limit" }).click();
  await expect(page.getByTestId("current-usage")).toContainText("Uses 4,000 of 1,000 tokens (400.00 %)");
});

test("the limit form works with the keyboard alone", async ({ page, request }) => {
  const admin = await asAdmin(request);
  const userId = freshUserId();
  await createUser(admin, { userId, tokenLimit: 10_000 });
  await recordUsage(admin, userId, 5_000);
  await logIn(page, ADMIN.userId, ADMIN.password);
  await page.goto("/limits");
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  for (let i = 0; i < 30; i++) {
    if ((await page.evaluate(() => document.activeElement?.id)) === "limit-user") break;
    await page.keyboard.press("Tab");
  }
  await expect(page.getByLabel("User")).toBeFocused();
  await page.keyboard.type(userId);
  await page.keyboard.press("Tab");
  await expect(page.getByLabel("New limit (tokens)")).toBeFocused();
  await page.keyboard.type("7000");
  await page.keyboard.press("Enter");
  await expect(page.getByRole("status").filter({ hasText: `is now 7,000 tokens` })).toBeVisible();
  // A dialog opened from the keyboard takes the focus, and gives it back on Escape.
  await page.getByLabel("New limit (tokens)").focus();
  await page.keyboard.press("Control+A");
  await page.keyboard.type("10");
  await page.keyboard.press("Enter");
  const dialog = page.getByRole("dialog");
  await expect(dialog.getByRole("button", { name: "Lower the limit" })).toBeFocused();
  await page.keyboard.press("Tab");
  await expect(dialog.getByRole("button", { name: "Cancel" })).toBeFocused();
  await page.keyboard.press("Tab");
  await expect(dialog.getByRole("button", { name: "Lower the limit" })).toBeFocused();
  await page.keyboard.press("Escape");
  await expect(dialog).toHaveCount(0);
  await expect(page.getByLabel("New limit (tokens)")).toBeFocused();
});

test("an admin adds a user, who then logs in with the password shown once", async ({ page, browser }) => {
  await logIn(page, ADMIN.userId, ADMIN.password);
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  const userId = freshUserId();
  await page.getByText("Add a user").click();
  await page.getByLabel("User id").fill(userId);
  await page.getByLabel("Display name (optional)").fill("Added In The Browser");
  await page.getByLabel("Token limit").fill("5000");
  await page.getByRole("button", { name: "Add user" }).click();
  await expect(page.getByRole("status").filter({ hasText: `Added ${userId}.` })).toBeVisible();
  const password = ((await page.getByTestId("initial-password").textContent()) ?? "").trim();
  expect(password).toHaveLength(20);
  // A second try with the same id is refused in words.
  await page.getByRole("button", { name: "Add user" }).click();
  await expect(page.getByRole("alert")).toContainText("already exists");

  const other = await browser.newContext();
  const theirPage = await other.newPage();
  await logIn(theirPage, userId, password);
  await expect(theirPage.getByRole("heading", { name: "Added In The Browser" })).toBeVisible();
  await expect(theirPage.getByTestId("token-limit")).toHaveText("5,000");
  await other.close();
});

const PAGES = [
  { name: "login", path: "/login", as: null },
  { name: "my-usage", path: "/", as: DEMO_USER },
  { name: "account", path: "/account", as: DEMO_USER },
  { name: "chat", path: "/chat", as: DEMO_USER },
  { name: "my-usage-page", path: "/usage", as: DEMO_USER },
  { name: "not-allowed", path: "/users", as: DEMO_USER },
  { name: "users", path: "/users", as: ADMIN },
  { name: "user-details", path: "/users?user=ben.okafor", as: ADMIN },
  { name: "dashboard-of-a-user", path: "/users/dara.nguyen", as: ADMIN },
  { name: "limits", path: "/limits?user=chen.wei", as: ADMIN },
  { name: "not-found", path: "/no/such/page", as: ADMIN },
];

for (const target of PAGES) {
  test(`${target.name}: no serious accessibility problems, and usable at 375 px`, async ({ page }, testInfo) => {
    if (target.as) {
      await logIn(page, target.as.userId, target.as.password);
      await expect(page.getByTestId("whoami")).toBeVisible();
    }
    await page.setViewportSize({ width: 375, height: 812 });
    await page.goto(target.path);
    await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
    await expect(page.locator(".loading")).toHaveCount(0);
    const results = await new AxeBuilder({ page }).analyze();
    const serious = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
    expect(serious.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`)).toEqual([]);
    // Nothing sticks out sideways on a phone: wide tables scroll inside their own box.
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    expect(overflow).toBeLessThanOrEqual(0);
    // Screenshots stay in end2end/test-results/ after the run (phone and desktop widths).
    for (const width of [375, 1440]) {
      await page.setViewportSize({ width, height: width === 375 ? 812 : 900 });
      const path = testInfo.outputPath(`${target.name}-${width}px.png`);
      await page.screenshot({ path, fullPage: true });
      await testInfo.attach(`${target.name}-${width}px`, { path, contentType: "image/png" });
    }
  });
}
