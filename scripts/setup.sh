#!/usr/bin/env bash
# Installs everything tokenmeter needs to build, run and test on a fresh Debian machine.
# Idempotent: each tool is installed only when the right version is not already there.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_LEPTOS_VERSION=0.3.11
WASM_BINDGEN_VERSION=0.2.130
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages -------------------------------------------------------------------------
need_apt=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
[ -x /usr/bin/chromium ] || need_apt+=(chromium chromium-driver)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- Rust targets ----------------------------------------------------------------------------
if ! rustup target list --installed | grep -q wasm32-unknown-unknown; then
  log "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# Installs a crate from crates.io whose own lockfile pins a dependency this registry/toolchain
# cannot use: fetch the source, re-pin that one dependency, install from the local copy.
install_repinned() {
  local crate=$1 version=$2 dep=$3 dep_version=$4
  local work src
  work=$(mktemp -d)
  # A --locked install fails on the pinned dependency but leaves the crate's source unpacked.
  cargo install -q "$crate" --version "=$version" --locked >/dev/null 2>&1 || true
  src=$(ls -d "$HOME"/.cargo/registry/src/*/"$crate-$version" 2>/dev/null | head -1)
  if [ -z "$src" ]; then
    echo "could not fetch the source of $crate $version" >&2
    return 1
  fi
  cp -r "$src" "$work/src-copy"
  (cd "$work/src-copy" && cargo update -q -p "$dep" --precise "$dep_version" \
    && cargo install -q --path . --locked)
  rm -rf "$work"
}

if ! cargo leptos --version 2>/dev/null | grep -q "$CARGO_LEPTOS_VERSION"; then
  log "installing cargo-leptos $CARGO_LEPTOS_VERSION (takes ~13 minutes on 2 cores, once)"
  install_repinned cargo-leptos "$CARGO_LEPTOS_VERSION" cargo-util-schemas 0.14.1
fi

if ! wasm-bindgen --version 2>/dev/null | grep -q "$WASM_BINDGEN_VERSION"; then
  log "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION"
  install_repinned wasm-bindgen-cli "$WASM_BINDGEN_VERSION" webpki-roots 1.0.10
fi

# --- npm packages (Playwright, wasm-opt from binaryen's JS build, ECharts) -------------------
if [ ! -d end2end/node_modules ] || ! diff -q end2end/package-lock.json end2end/node_modules/.package-lock.json >/dev/null 2>&1; then
  log "npm ci (end2end)"
  (cd end2end && npm ci --no-audit --no-fund --loglevel=error)
fi
# The charts' ECharts, served by the app from its own assets (never a CDN).
if ! cmp -s end2end/node_modules/echarts/dist/echarts.min.js public/echarts.min.js; then
  log "public/echarts.min.js from the echarts npm package"
  cp end2end/node_modules/echarts/dist/echarts.min.js public/echarts.min.js
fi

# --- Python: the OpenAI SDK, to test the gateway with a real client --------------------------
OPENAI_SDK_VERSION=3.54.0
if ! .venv/bin/python -c "import openai, sys; sys.exit(openai.__version__ != '$OPENAI_SDK_VERSION')" 2>/dev/null; then
  log "python venv with openai==$OPENAI_SDK_VERSION (.venv)"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "openai==$OPENAI_SDK_VERSION"
fi

log "ready"
