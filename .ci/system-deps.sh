#!/usr/bin/env bash
# Debian packages the tests need: a headless Chromium and its matching driver (tests/test_browser.py),
# and Node.js (tests/test_page_escaping.py runs the review page's script without a browser).
# Idempotent: does nothing when both are installed already.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v node >/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core nodejs >/dev/null
