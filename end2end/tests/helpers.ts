import { expect, type APIRequestContext, type Page } from "@playwright/test";

// The server runs with `--seed-demo`: these demo accounts exist and the login page lists them.
export const ADMIN = { userId: "admin", password: "demo-admin" };
export const DEMO_USER = { userId: "ana.silva", password: "demo-password", name: "Ana Silva" };

// A user of our own for each test, so no test depends on what another one did.
export function freshUserId(): string {
  return `e2e-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6)}`;
}

/** Logs the API request context in as the demo admin (the session cookie is kept). */
export async function asAdmin(request: APIRequestContext): Promise<APIRequestContext> {
  const res = await request.post("/api/session", { data: ADMIN });
  expect(res.status()).toBe(200);
  return request;
}

export async function createUser(
  request: APIRequestContext,
  body: { userId: string; tokenLimit: number; displayName?: string; password?: string; role?: string },
) {
  const res = await request.post("/api/users", { data: body });
  expect(res.status()).toBe(201);
  return res.json();
}

export async function recordUsage(request: APIRequestContext, userId: string, tokens: number) {
  const res = await request.post(`/api/users/${userId}/usage`, {
    data: { tokensConsumed: tokens, inputTokens: tokens - 1, outputTokens: 1, model: "demo-echo" },
  });
  expect(res.status()).toBe(200);
  return res.json();
}

/** Logs in through the login form, as a person would, and waits until it worked (unless told
 *  the login is meant to fail). */
export async function logIn(page: Page, userId: string, password: string, { expectSuccess = true } = {}) {
  if (!page.url().includes("/login")) await page.goto("/login");
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  await page.getByLabel("User id").fill(userId);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  if (expectSuccess) await expect(page.getByTestId("whoami")).toBeVisible();
}

/** Collects everything that went wrong in the browser, to assert it stayed empty. */
export function watchErrors(page: Page, allowedStatuses: number[] = []): string[] {
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error" && !allowedStatuses.some((s) => m.text().includes(`${s}`))) errors.push(m.text());
  });
  page.on("response", (r) => {
    if (r.status() >= 400 && !allowedStatuses.includes(r.status())) errors.push(`${r.status()} ${r.url()}`);
  });
  return errors;
}
