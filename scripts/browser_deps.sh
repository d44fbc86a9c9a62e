#!/usr/bin/env bash
# Installs what the dashboard's browser test needs: Debian's Chromium (and Node/npm where missing) and the
# npm packages of tests/browser (the official MCP Apps host bridge, the MCP client, esbuild, playwright-core)
# from the committed package-lock.json. Playwright drives the system Chromium; it downloads no browser.
# Where Chromium cannot be installed the browser test skips and says why; nothing here fails CI for that.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; } \
      || echo "browser_deps: could not install ${missing[*]}; the browser test will skip or fail saying so" >&2
  else
    echo "browser_deps: missing ${missing[*]} and no root apt-get to install them" >&2
  fi
fi
command -v chromium >/dev/null 2>&1 && chromium --version
if command -v npm >/dev/null 2>&1; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
