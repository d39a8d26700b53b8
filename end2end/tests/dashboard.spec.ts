import { test, expect } from "@playwright/test";
import { asAdmin, createUser, freshUserId, logIn, recordUsage, watchErrors } from "./helpers";

test("a user's dashboard renders, hydrates and shows usage recorded through the API", async ({ page, request }) => {
  const errors = watchErrors(page);
  const admin = await asAdmin(request);
  const userId = freshUserId();
  await createUser(admin, { userId, tokenLimit: 10_000, displayName: "Playwright Person", password: "pw-for-playwright" });
  await recordUsage(admin, userId, 1_200);
  const after = await recordUsage(admin, userId, 300);
  expect(after.tokenUsage).toBe(1_500);

  await page.goto("/");
  await expect(page).toHaveURL(/\/login$/);
  await logIn(page, userId, "pw-for-playwright");
  await expect(page).toHaveURL(/\/$/);
  await expect(page.getByRole("heading", { name: "Playwright Person" })).toBeVisible();
  await expect(page.getByTestId("tokens-used")).toHaveText("1,500");
  await expect(page.getByTestId("token-limit")).toHaveText("10,000");
  await expect(page.getByTestId("tokens-remaining")).toHaveText("8,500");
  await expect(page.getByTestId("percentage-used")).toHaveText("15.00 %");
  await expect(page.getByRole("progressbar", { name: "Share of token limit used" })).toHaveAttribute(
    "aria-valuenow",
    "15",
  );

  // The WASM runs the page, and the live refresh (every 5 s) picks up new usage without a reload.
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  await recordUsage(admin, userId, 6_500);
  await expect(page.getByTestId("tokens-used")).toHaveText("8,000", { timeout: 8_000 });
  await expect(page.getByTestId("percentage-used")).toHaveText("80.00 %");
  await expect(page.getByRole("status").filter({ hasText: "75 %" })).toBeVisible();

  expect(errors, `browser errors: ${errors.join("\n")}`).toEqual([]);
});

test("an unknown address shows a real 404 page", async ({ page }) => {
  await page.goto("/login");
  await logIn(page, "ana.silva", "demo-password");
  await expect(page).toHaveURL(/\/$/);
  const res = await page.goto("/no/such/page");
  expect(res?.status()).toBe(404);
  await expect(page.getByRole("heading", { name: "Page not found" })).toBeVisible();
});
