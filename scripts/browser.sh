#!/usr/bin/env bash
# Headless Chromium and its driver for the browser tests of `unmask serve` (Debian packages).
# Best effort: without root or apt the browser tests skip and say why.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "note: no apt-get here; the browser tests of unmask serve will be skipped" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "note: not root and no sudo; the browser tests of unmask serve will be skipped" >&2
    exit 0
  fi
fi
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
  || echo "note: could not install chromium; the browser tests of unmask serve will be skipped" >&2
