#!/usr/bin/env bash
# Installs Debian's headless Chromium and ChromeDriver for the web-page tests when missing.
# Without root or apt the browser tests skip themselves; nothing else depends on it.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && [ -d /usr/share/fonts/truetype/wqy ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium and chromium-driver for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver fonts-wqy-zenhei >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped"
else
  echo "note: chromium not found and cannot be installed here; browser tests will be skipped"
fi
exit 0
