import { test, expect, type APIRequestContext } from "@playwright/test";

// A user of our own for each run, so the test never depends on what else is in the database.
function freshUserId(): string {
  return `e2e-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6)}`;
}

async function recordUsage(request: APIRequestContext, userId: string, tokens: number) {
  const res = await request.post(`/api/users/${userId}/usage`, {
    data: { tokensConsumed: tokens, inputTokens: tokens - 1, outputTokens: 1, model: "demo-echo" },
  });
  expect(res.status()).toBe(200);
  return res.json();
}

test("the dashboard renders, hydrates and shows usage recorded through the API", async ({ page, request }) => {
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  page.on("response", (r) => {
    if (r.status() >= 400) errors.push(`${r.status()} ${r.url()}`);
  });

  const userId = freshUserId();
  const created = await request.post("/api/users", {
    data: { userId, tokenLimit: 10_000, displayName: "Playwright Person" },
  });
  expect(created.status()).toBe(201);
  await recordUsage(request, userId, 1_200);
  const after = await recordUsage(request, userId, 300);
  expect(after.tokenUsage).toBe(1_500);

  await page.goto(`/users/${userId}`);
  await expect(page.getByRole("heading", { name: "Playwright Person" })).toBeVisible();
  await expect(page.getByTestId("tokens-used")).toHaveText("1,500");
  await expect(page.getByTestId("token-limit")).toHaveText("10,000");
  await expect(page.getByTestId("tokens-remaining")).toHaveText("8,500");
  await expect(page.getByTestId("percentage-used")).toHaveText("15.00 %");
  await expect(page.getByRole("progressbar", { name: "Share of token limit used" })).toHaveAttribute(
    "aria-valuenow",
    "15",
  );

  // The WASM took over the page...
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  // ...and the live refresh (browser-side, every 5 s) picks up new usage without a reload.
  await recordUsage(request, userId, 6_500);
  await expect(page.getByTestId("tokens-used")).toHaveText("8,000", { timeout: 8_000 });
  await expect(page.getByTestId("percentage-used")).toHaveText("80.00 %");
  await expect(page.getByRole("status").filter({ hasText: "75 %" })).toBeVisible();

  expect(errors, `browser errors: ${errors.join("\n")}`).toEqual([]);
});

test("the start page lists users and links to their dashboards", async ({ page, request }) => {
  const userId = freshUserId();
  await request.post("/api/users", { data: { userId, tokenLimit: 500 } });
  await page.goto("/");
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  await page.getByRole("link", { name: userId }).click();
  await expect(page).toHaveURL(new RegExp(`/users/${userId}$`));
  await expect(page.getByTestId("user-id")).toHaveText(userId);
});

test("an unknown address shows a real 404 page", async ({ page }) => {
  const res = await page.goto("/no/such/page");
  expect(res?.status()).toBe(404);
  await expect(page.getByRole("heading", { name: "Page not found" })).toBeVisible();
});
