import { expect, test, type APIRequestContext, type Page } from "@playwright/test";
import { asAdmin, createUser, freshUserId, logIn, watchErrors } from "./helpers";

async function newChatter(request: APIRequestContext, tokenLimit: number): Promise<string> {
  const userId = freshUserId();
  await asAdmin(request);
  await createUser(request, { userId, tokenLimit, password: "chat-password" });
  return userId;
}

async function usageOf(request: APIRequestContext, userId: string) {
  const res = await request.get(`/api/users/${userId}`);
  expect(res.status()).toBe(200);
  return res.json();
}

async function openChat(page: Page, userId: string) {
  await logIn(page, userId, "chat-password");
  await page.goto("/chat");
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  await expect(page.getByTestId("usage-card")).toBeVisible();
}

test("chat with the demo model: the reply streams in with its tokens and cost, and the bar follows", async ({ page, request }) => {
  const userId = await newChatter(request, 100_000);
  const errors = watchErrors(page);
  await openChat(page, userId);
  await expect(page.getByTestId("model-picker")).toContainText("Demo model (offline, not a real LLM)");
  await expect(page.getByTestId("tokens-used")).toHaveText("0");

  await page.getByTestId("prompt").fill("How does tokenmeter keep my budget exact?");
  // TokenPreview: the estimate and the most it could cost, before sending.
  await expect(page.getByTestId("token-preview")).toContainText(/About \d+ tokens to send · reply up to 256 tokens · at most \$/);
  await page.getByTestId("send").click();

  const reply = page.locator('[data-testid="turn"][data-role="assistant"]');
  // It streams: text is on screen while the reply is still being written.
  await expect(reply.and(page.locator('[aria-busy="true"]')).getByTestId("turn-text")).toContainText("[Demo model");
  await expect(page.getByTestId("stop")).toBeVisible();
  await expect(reply).toHaveAttribute("aria-busy", "false", { timeout: 15_000 });
  const meta = reply.getByTestId("reply-meta");
  await expect(meta).toContainText(/\d+ in · \d+ out tokens · \$[\d.]+ · [\d.]+ s/);

  // The numbers on screen are the ledger's.
  const after = await usageOf(request, userId);
  expect(after.tokenUsage).toBeGreaterThan(0);
  expect(after.tokensReserved).toBe(0);
  const [, input, output] = (await meta.textContent())!.match(/([\d,]+) in · ([\d,]+) out/)!;
  expect(Number(input.replace(/,/g, "")) + Number(output.replace(/,/g, ""))).toBe(after.tokenUsage);
  await expect(page.getByTestId("tokens-used")).toHaveText(after.tokenUsage.toLocaleString("en-US"));
  await expect(page.getByTestId("cost-spent")).not.toHaveText("$0");

  // A second message carries the conversation.
  await page.getByTestId("prompt").fill("And what happens at the limit?");
  await page.getByTestId("send").click();
  await expect(page.locator('[data-testid="turn"][data-role="assistant"]')).toHaveCount(2);
  await expect(reply.nth(1)).toHaveAttribute("aria-busy", "false", { timeout: 15_000 });
  expect(errors).toEqual([]);
});

test("stopping a reply keeps what was written and charges only that", async ({ page, request }) => {
  const userId = await newChatter(request, 100_000);
  await openChat(page, userId);
  await page.getByTestId("prompt").fill("Write me something long, I may stop you.");
  await page.getByTestId("send").click();
  const reply = page.locator('[data-testid="turn"][data-role="assistant"]');
  await expect(reply.getByTestId("turn-text")).toContainText("[Demo model");
  await page.getByTestId("stop").click();
  await expect(reply.getByTestId("reply-stopped")).toBeVisible();
  // The server records what was generated and gives the rest of the hold back.
  await expect
    .poll(async () => {
      const u = await usageOf(request, userId);
      return u.tokensReserved === 0 && u.tokenUsage > 0;
    })
    .toBe(true);
  const after = await usageOf(request, userId);
  expect(after.tokenUsage).toBeLessThan(256 + 40);
  // Retry sends the same question again.
  await reply.getByRole("button", { name: "Retry" }).click();
  await expect(reply).toHaveAttribute("aria-busy", "false", { timeout: 15_000 });
  await expect(reply.getByTestId("reply-meta")).toBeVisible();
});

test("at the limit the input is disabled and a dialog says why", async ({ page, request }) => {
  const userId = await newChatter(request, 60);
  const errors = watchErrors(page, [429]);
  await openChat(page, userId);
  await page.getByTestId("prompt").fill("Use up everything I have, please.");
  await page.getByTestId("send").click();
  const reply = page.locator('[data-testid="turn"][data-role="assistant"]');
  // The answer is cut to what was left: the budget ends exactly at the limit.
  await expect(reply.getByTestId("reply-meta")).toContainText("stopped at the length limit", { timeout: 15_000 });
  const after = await usageOf(request, userId);
  expect(after.tokenUsage).toBe(60);
  expect(after.remainingTokens).toBe(0);

  const dialog = page.getByRole("dialog", { name: "Token limit reached" });
  await expect(dialog).toBeVisible();
  await expect(dialog).toContainText("used all 60 tokens");
  await dialog.getByRole("button", { name: "I understand" }).click();
  await expect(dialog).toBeHidden();
  await expect(page.getByTestId("prompt")).toBeDisabled();
  await expect(page.getByTestId("send")).toBeDisabled();
  await expect(page.getByTestId("tokens-remaining")).toHaveText("0");
  expect(errors).toEqual([]);
});
