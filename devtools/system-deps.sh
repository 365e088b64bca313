#!/usr/bin/env bash
# What `make test` needs from the operating system, installed from Debian's packages when missing:
# Chromium for the browser tests (Playwright drives it; no browser is ever downloaded) and Node.js
# for the client library's unit tests. Fails, saying why, when it cannot install them.
set -euo pipefail

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v node >/dev/null || missing+=(nodejs)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "system-deps: installing ${missing[*]} from the Debian packages" >&2
if ! command -v apt-get >/dev/null; then
    echo "system-deps: no apt-get here; install ${missing[*]} yourself (any Chromium: set CHROMIUM=/path)" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "system-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get install -y -q "${missing[@]}" >&2 \
    || { "${sudo[@]}" apt-get update -q >&2 && "${sudo[@]}" apt-get install -y -q "${missing[@]}" >&2; } \
    || { echo "system-deps: could not install ${missing[*]}" >&2; exit 1; }
