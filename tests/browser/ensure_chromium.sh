#!/usr/bin/env bash
# Make sure Debian's Chromium is installed for the browser tests
# (tests/browser/*_check.py). Idempotent: does nothing when
# $WSFABRIC_CHROMIUM (default /usr/bin/chromium) already runs.
#
# Needs root (or sudo) only when it has to install. The Python side is
# `pip install playwright` with PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1: the tests
# drive this Chromium and playwright must never download a browser of its own.
set -euo pipefail

CHROMIUM="${WSFABRIC_CHROMIUM:-/usr/bin/chromium}"

chromium_works() {
    [ -x "$CHROMIUM" ] && timeout 60 "$CHROMIUM" --headless --no-sandbox --version >/dev/null 2>&1
}

if chromium_works; then
    echo "ensure_chromium: $("$CHROMIUM" --version 2>/dev/null | head -n1)"
    exit 0
fi

if [ "$CHROMIUM" != /usr/bin/chromium ]; then
    echo "ensure_chromium: $CHROMIUM does not run, and only /usr/bin/chromium can be installed" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: no apt-get here; install Chromium at /usr/bin/chromium by hand" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "ensure_chromium: Chromium is missing and installing it needs root" >&2
        exit 1
    fi
fi

echo "ensure_chromium: installing Debian's chromium package"
export DEBIAN_FRONTEND=noninteractive
# Bounded, like every wait of the test suite.
timeout 600 $SUDO apt-get update -qq
timeout 1200 $SUDO apt-get install -y -qq chromium >/dev/null

if ! chromium_works; then
    echo "ensure_chromium: chromium was installed but $CHROMIUM does not run" >&2
    exit 1
fi
echo "ensure_chromium: $("$CHROMIUM" --version 2>/dev/null | head -n1)"
