import { defineConfig } from "@playwright/test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

// The server under test: the release build by default (CI's one release-WASM browser check),
// or another build through E2E_BINARY. Each run gets a throw-away SQLite database.
const root = path.resolve(__dirname, "..");
const binary = process.env.E2E_BINARY ?? path.join(root, "target/release/tokenmeter");
const port = Number(process.env.E2E_PORT ?? 3107);
const dbDir = process.env.E2E_DB_DIR ?? fs.mkdtempSync(path.join(os.tmpdir(), "tokenmeter-e2e-"));
process.env.E2E_DB_DIR = dbDir;

export default defineConfig({
  testDir: "./tests",
  timeout: 30_000,
  expect: { timeout: 10_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  reporter: [["list"]],
  outputDir: "test-results",
  use: {
    baseURL: `http://127.0.0.1:${port}`,
    trace: "retain-on-failure",
    screenshot: "only-on-failure",
  },
  projects: [
    {
      name: "chromium",
      use: {
        browserName: "chromium",
        launchOptions: {
          executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
          args: [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
          ],
        },
      },
    },
  ],
  webServer: {
    // Demo mode: the demo admin and users exist, and the login page lists them.
    command: `${binary} serve --seed-demo`,
    cwd: root,
    url: `http://127.0.0.1:${port}/healthz`,
    reuseExistingServer: false,
    timeout: 60_000,
    stdout: "pipe",
    stderr: "pipe",
    env: {
      DATABASE_URL: `sqlite:${path.join(dbDir, "e2e.db")}`,
      LEPTOS_SITE_ADDR: `127.0.0.1:${port}`,
      LEPTOS_SITE_ROOT: path.join(root, "target/site"),
      RUST_LOG: "warn",
    },
  },
});
