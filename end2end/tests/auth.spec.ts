import { test, expect } from "@playwright/test";
import { ADMIN, DEMO_USER, asAdmin, createUser, freshUserId, logIn, watchErrors } from "./helpers";

test("a user logs in and sees only their own dashboard", async ({ page }) => {
  const errors = watchErrors(page);
  await page.goto("/");
  await expect(page).toHaveURL(/\/login$/);
  // Demo mode says how to log in.
  await expect(page.getByRole("complementary", { name: "Demo accounts" })).toContainText("demo-admin");
  await logIn(page, DEMO_USER.userId, DEMO_USER.password);

  await expect(page).toHaveURL(/\/$/);
  await expect(page.getByRole("heading", { name: DEMO_USER.name })).toBeVisible();
  await expect(page.getByTestId("whoami")).toContainText(DEMO_USER.userId);
  const nav = page.getByRole("navigation", { name: "Main" });
  await expect(nav.getByRole("link", { name: "Dashboard" })).toBeVisible();
  await expect(nav.getByRole("link", { name: "Users" })).toHaveCount(0);
  expect(errors, `browser errors: ${errors.join("\n")}`).toEqual([]);
});

test("a user who types the admin address gets a clear 'not allowed' page", async ({ page }) => {
  await logIn(page, DEMO_USER.userId, DEMO_USER.password);
  await expect(page).toHaveURL(/\/$/);
  const res = await page.goto("/users");
  expect(res?.status()).toBe(403);
  await expect(page.getByRole("alert")).toContainText("Not allowed");
  await expect(page.getByRole("alert")).toContainText("Only an administrator can do this.");
  // Someone else's dashboard by guessing the address: refused the same way.
  const other = await page.goto("/users/ben.okafor");
  expect(other?.status()).toBe(403);
  await expect(page.getByRole("alert")).toContainText("Not allowed");
  await expect(page.getByText("Ben Okafor")).toHaveCount(0);
  const limits = await page.goto("/limits");
  expect(limits?.status()).toBe(403);
  await expect(page.getByRole("alert")).toContainText("Not allowed");
  await expect(page.getByLabel("New limit (tokens)")).toHaveCount(0);
});

test("an admin logs in and lands on the user list, then opens a user", async ({ page }) => {
  const errors = watchErrors(page);
  await logIn(page, ADMIN.userId, ADMIN.password);
  await expect(page).toHaveURL(/\/users$/);
  await expect(page.getByRole("heading", { name: "Users" })).toBeVisible();
  await expect(page.getByRole("link", { name: "Ben Okafor" })).toBeVisible();
  await page.getByRole("link", { name: "Ben Okafor" }).click();
  await expect(page).toHaveURL(/\/users\/ben\.okafor$/);
  await expect(page.getByTestId("user-id")).toHaveText("ben.okafor");
  expect(errors, `browser errors: ${errors.join("\n")}`).toEqual([]);
});

test("a visit before login comes back to the page asked for", async ({ page }) => {
  await page.goto("/users/chen.wei");
  await expect(page).toHaveURL(/\/login\?next=\/users\/chen\.wei$/);
  await logIn(page, ADMIN.userId, ADMIN.password);
  await expect(page).toHaveURL(/\/users\/chen\.wei$/);
  await expect(page.getByTestId("user-id")).toHaveText("chen.wei");
});

test("a wrong password is refused in words, and nothing opens", async ({ page }) => {
  const errors = watchErrors(page, [401]);
  await logIn(page, DEMO_USER.userId, "not-the-password", { expectSuccess: false });
  await expect(page.getByRole("alert")).toHaveText("The user id or password is wrong.");
  await expect(page).toHaveURL(/\/login/);
  expect(errors, `browser errors: ${errors.join("\n")}`).toEqual([]);
});

test("logging out ends the session", async ({ page, context }) => {
  await logIn(page, DEMO_USER.userId, DEMO_USER.password);
  await expect(page.getByTestId("whoami")).toBeVisible();
  const before = (await context.cookies()).find((c) => c.name === "tm_session");
  expect(before?.httpOnly).toBe(true);
  await page.getByRole("button", { name: "Log out" }).click();
  await expect(page).toHaveURL(/\/login$/);
  await expect(page.getByTestId("whoami")).toHaveCount(0);
  // The old cookie is dead on the server, not just forgotten by the browser.
  const replay = await page.request.get("/api/me", { headers: { cookie: `tm_session=${before?.value}` } });
  expect(replay.status()).toBe(401);
  await page.goto("/");
  await expect(page).toHaveURL(/\/login$/);
});

test("a user creates an API key, sees it once, uses it and revokes it", async ({ page, request, playwright }) => {
  const admin = await asAdmin(request);
  const userId = freshUserId();
  await createUser(admin, { userId, tokenLimit: 1000, password: "pw-for-keys-test" });
  await logIn(page, userId, "pw-for-keys-test");
  await page.getByRole("link", { name: "Account" }).click();
  await expect(page).toHaveURL(/\/account$/);
  await page.getByLabel("Key name").fill("my script");
  await page.getByRole("button", { name: "Create key" }).click();
  const key = (await page.getByTestId("new-api-key").textContent())?.trim() ?? "";
  expect(key).toMatch(/^tm_[0-9a-f]{64}$/);
  await expect(page.getByRole("cell", { name: "my script", exact: true })).toBeVisible();

  const program = await playwright.request.newContext({ baseURL: page.url().replace(/\/account$/, "") });
  const me = await program.get("/api/me", { headers: { authorization: `Bearer ${key}` } });
  expect(me.status()).toBe(200);
  expect((await me.json()).userId).toBe(userId);

  await page.getByRole("button", { name: "Revoke key my script" }).click();
  await expect(page.getByText(/^revoked/)).toBeVisible();
  const after = await program.get("/api/me", { headers: { authorization: `Bearer ${key}` } });
  expect(after.status()).toBe(401);
  await program.dispose();
});
