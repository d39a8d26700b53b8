# tokenmeter — the two commands a new machine needs are `make run` and `make test`.
# Both install what they need first (scripts/setup.sh; quick when everything is there).

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(CURDIR)/end2end/node_modules/.bin:$(PATH)
DATABASE_URL ?= sqlite:data/tokenmeter.db
ADDR ?= 127.0.0.1:3000

.PHONY: run test setup build build-release test-rust test-e2e dev bench fmt

setup:
	@scripts/setup.sh

## Build and run the app on SQLite with demo data at http://127.0.0.1:3000
run: setup
	cargo leptos build
	DATABASE_URL=$(DATABASE_URL) LEPTOS_SITE_ADDR=$(ADDR) ./target/debug/tokenmeter serve --seed-demo

## Every test: domain properties, store contract on SQLite and Postgres, HTTP, two processes,
## the WASM build, and Playwright in Chromium against a release build.
test: setup
	cargo fmt --all -- --check
	$(MAKE) test-rust
	$(MAKE) test-e2e

test-rust:
	cargo test -p domain
	cargo test -p app --features ssr
	scripts/with-postgres.sh cargo test -p tokenmeter

## Release build (WASM through binaryen's wasm-opt from npm), then Playwright against it.
test-e2e:
	cargo leptos build --release
	cd end2end && npx playwright test

## Live-reloading development server (rebuilds on save).
dev: setup
	DATABASE_URL=$(DATABASE_URL) cargo leptos watch

bench: setup
	scripts/bench.sh

fmt:
	cargo fmt --all
