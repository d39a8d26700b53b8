import * as fs from "node:fs";
import AxeBuilder from "@axe-core/playwright";
import { expect, test, type APIRequestContext, type Page } from "@playwright/test";
import { ADMIN, DEMO_USER, asAdmin, logIn, recordUsage, watchErrors } from "./helpers";

// Ana Silva has three weeks of demo usage (seeded), spread over days, models and agents.
const ANA = DEMO_USER;

async function stats(request: APIRequestContext, query: string) {
  const res = await request.get(`/api/usage/stats?${query}`);
  expect(res.status()).toBe(200);
  return res.json();
}

const grouped = (n: number) => n.toLocaleString("en-US");

/** Whether the chart's canvas has anything drawn on it. */
async function chartIsDrawn(page: Page): Promise<boolean> {
  return page.evaluate(() => {
    const canvas = document.querySelector("#usage-chart canvas") as HTMLCanvasElement | null;
    if (!canvas || canvas.width === 0) return false;
    const data = canvas.getContext("2d")!.getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
    return painted > 500;
  });
}

test("an admin opens a user's usage: presets, periods, chart, table pages, CSV, and the keyboard", async ({ page, request }) => {
  await asAdmin(request);
  // Something from just now is in the numbers too.
  await recordUsage(request, ANA.userId, 1_234);
  const errors = watchErrors(page);
  await logIn(page, ADMIN.userId, ADMIN.password);
  await page.goto(`/users?q=${ANA.userId}`);
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  const opener = page.getByRole("button", { name: `View usage of ${ANA.userId}` });
  await opener.click();

  const dialog = page.getByRole("dialog", { name: `Usage of ${ANA.name}` });
  await expect(dialog).toBeVisible();
  await expect(dialog.getByTestId("usage-range")).toContainText("30 days");
  const month = await stats(request, `userId=${ANA.userId}&days=30&period=day&pageSize=1000`);
  expect(month.summary.messages).toBeGreaterThan(20);
  await expect(dialog.getByTestId("card-total")).toContainText(grouped(month.summary.totalTokens));
  await expect(dialog.getByTestId("card-total")).toContainText(`↓ ${grouped(month.summary.inputTokens)} in`);
  await expect(dialog.getByTestId("card-average")).toContainText(grouped(month.summary.averageTokensPerDay));
  await expect(dialog.getByTestId("card-messages")).toContainText(grouped(month.summary.messages));
  await expect(dialog.getByTestId("card-models")).toContainText(`${month.summary.agents} / ${month.summary.models}`);

  // The chart is drawn by the WASM with ECharts, as lines, then as bars.
  await expect(dialog.locator("#usage-chart canvas")).toHaveCount(1);
  await expect.poll(() => chartIsDrawn(page)).toBe(true);
  await dialog.getByRole("button", { name: "Bar" }).click();
  await expect(dialog.locator("#usage-chart")).toHaveAttribute("data-kind", "bar");
  await expect(dialog.getByRole("button", { name: "Bar" })).toHaveAttribute("aria-pressed", "true");
  await expect.poll(() => chartIsDrawn(page)).toBe(true);
  // A narrower window: the chart follows its box.
  const chartFits = () =>
    page.evaluate(() => {
      const box = document.querySelector("#usage-chart") as HTMLElement;
      const canvas = box.querySelector("canvas") as HTMLCanvasElement;
      return { box: box.clientWidth, canvas: Math.round(canvas.getBoundingClientRect().width) };
    });
  const wide = await chartFits();
  const viewport = page.viewportSize()!;
  await page.setViewportSize({ width: 520, height: viewport.height });
  await expect.poll(async () => {
    const now = await chartFits();
    return now.canvas === now.box && now.box < wide.box;
  }).toBe(true);
  await page.setViewportSize(viewport);
  await expect.poll(async () => (await chartFits()).canvas).toBe(wide.canvas);
  await expect.poll(() => chartIsDrawn(page)).toBe(true);

  // The table pages through every day with usage, 10 at a time, and sorts by any column.
  const days = month.rows.length;
  const pages = Math.ceil(days / 10);
  const pageInfo = dialog.getByTestId("usage-page-info");
  await expect(pageInfo).toHaveText(`Page 1 of ${pages} · ${days} rows`);
  const firstDate = dialog.locator(".usage-table tbody tr").first().locator("td").first();
  await expect(firstDate).toHaveText(month.rows[0].key);
  await dialog.getByRole("button", { name: "Next →" }).click();
  await expect(pageInfo).toHaveText(`Page 2 of ${pages} · ${days} rows`);
  await expect(firstDate).toHaveText(month.rows[10].key);
  await dialog.getByRole("button", { name: /^Total/ }).click();
  await expect(dialog.locator("th", { hasText: "Total" })).toHaveAttribute("aria-sort", "ascending");
  await dialog.getByRole("button", { name: /^Total/ }).click();
  await expect(dialog.locator("th", { hasText: "Total" })).toHaveAttribute("aria-sort", "descending");
  const biggest = [...month.rows].sort((a: any, b: any) => b.totalTokens - a.totalTokens || (a.key < b.key ? -1 : 1))[0];
  await expect(dialog.locator(".usage-table tbody tr").first().locator("td").nth(1)).toHaveText(grouped(biggest.totalTokens));

  // Presets and periods ask the server again.
  await dialog.getByRole("button", { name: "7 days" }).click();
  await expect(dialog.getByTestId("usage-range")).toContainText("7 days");
  const week = await stats(request, `userId=${ANA.userId}&days=7&period=day`);
  await expect(dialog.getByTestId("card-total")).toContainText(grouped(week.summary.totalTokens));
  await dialog.getByRole("button", { name: "90 days" }).click();
  await dialog.getByLabel("Period", { exact: true }).selectOption("week");
  const weekly = await stats(request, `userId=${ANA.userId}&days=90&period=week&pageSize=1000`);
  await expect(pageInfo).toHaveText(`Page 1 of 1 · ${weekly.rows.length} rows`);
  await expect(dialog.getByTestId("usage-range")).toContainText(`${weekly.from} to ${weekly.to}`);
  await expect.poll(() => chartIsDrawn(page)).toBe(true);

  // Export CSV: the file has the same rows as the API, for the range shown.
  const [download] = await Promise.all([
    page.waitForEvent("download"),
    dialog.getByRole("link", { name: "Export CSV" }).click(),
  ]);
  expect(download.suggestedFilename()).toMatch(/^usage-ana\.silva-.*-by-week\.csv$/);
  const csv = fs.readFileSync((await download.path())!, "utf8").trimEnd().split("\r\n");
  expect(csv[0]).toBe("key,input_tokens,output_tokens,total_tokens,cost_usd,messages,conversations,agents,models,last_activity_at");
  const byDate = [...weekly.rows].sort((a: any, b: any) => (a.key < b.key ? -1 : 1));
  expect(csv.slice(1).map((line) => line.split(",").slice(0, 4).join(","))).toEqual(
    byDate.map((r: any) => [r.key, r.inputTokens, r.outputTokens, r.totalTokens].join(",")),
  );

  // Refresh, then axe on the open dialog, then Escape closes it and the focus goes back.
  await dialog.getByRole("button", { name: "Refresh" }).click();
  await expect(dialog.getByTestId("card-total")).toContainText(grouped(weekly.summary.totalTokens));
  const results = await new AxeBuilder({ page }).include(".modal").analyze();
  const serious = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  expect(serious.map((v) => `${v.id}: ${v.help}`)).toEqual([]);
  await page.keyboard.press("Escape");
  await expect(dialog).toHaveCount(0);
  await expect(opener).toBeFocused();
  expect(errors).toEqual([]);
});

test("a user sees their own usage on My usage, and an empty range says so", async ({ page, request }) => {
  await logIn(page, ANA.userId, ANA.password);
  await page.getByRole("link", { name: "My usage" }).click();
  await expect(page).toHaveURL(/\/usage$/);
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  await page.getByRole("button", { name: "View usage" }).click();
  const dialog = page.getByRole("dialog", { name: `Usage of ${ANA.name}` });
  await expect(dialog.getByTestId("card-total")).toBeVisible();
  // Tab stays inside the dialog.
  for (let i = 0; i < 25; i++) await page.keyboard.press("Tab");
  expect(await page.evaluate(() => !!document.activeElement?.closest(".modal"))).toBe(true);
  await dialog.getByRole("button", { name: "Close" }).click();
  await expect(dialog).toHaveCount(0);

  // Someone with no usage yet sees a plain "nothing here" instead of empty charts.
  await asAdmin(request);
  const fresh = `e2e-empty-${Date.now().toString(36)}`;
  await request.post("/api/users", { data: { userId: fresh, tokenLimit: 1000, password: "empty-password" } });
  await page.context().clearCookies();
  await logIn(page, fresh, "empty-password");
  await page.goto("/usage");
  await expect(page.locator("main")).toHaveAttribute("data-hydrated", "true");
  await page.getByRole("button", { name: "View usage" }).click();
  await expect(page.getByTestId("usage-empty")).toHaveText("No usage in this range.");
});
