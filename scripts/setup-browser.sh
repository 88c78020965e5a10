#!/usr/bin/env bash
# What the web page test (tests/tests/web.rs) drives: Debian's Chromium and npm's playwright-core
# (pinned in tests/web/package-lock.json; it never downloads a browser of its own). Idempotent.
# Without root or apt-get, Chromium cannot be installed: this says so, and the test prints
# "SKIPPED the web page test" instead of failing.
set -uo pipefail
cd "$(dirname "$0")/.."
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ] && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q chromium > /tmp/dmue-apt.log 2>&1 \
    || { apt-get update -q > /tmp/dmue-apt.log 2>&1 && apt-get install -y -q chromium >> /tmp/dmue-apt.log 2>&1; } \
    || tail -5 /tmp/dmue-apt.log
fi
if [ -x "$CHROMIUM" ]; then
  echo "setup-browser: $("$CHROMIUM" --version 2> /dev/null | head -1)"
else
  echo "setup-browser: Chromium could not be installed (needs root and apt-get); the web page test will be SKIPPED"
fi
if [ ! -d tests/web/node_modules/playwright-core ]; then
  if command -v npm > /dev/null; then
    npm ci --prefix tests/web --no-audit --no-fund --silent || echo "setup-browser: npm ci failed; the web page test will be SKIPPED"
  else
    echo "setup-browser: no npm; the web page test will be SKIPPED"
  fi
fi
