#!/usr/bin/env bash
# Installs what the browser test drives: Debian's Chromium and its
# chromedriver. Idempotent; called by test.sh and by the test itself when
# chromedriver is missing.
set -euo pipefail
if command -v chromedriver >/dev/null && { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; then
  exit 0
fi
echo "==> chromium and chromium-driver (for the browser demo's test)"
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"
ensure_packages chromium chromium-driver
