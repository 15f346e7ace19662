#!/usr/bin/env bash
# Install the Debian packages robustarch uses when they are missing:
#   dataset-fashion-mnist  real data for the offline demo (idx files in /usr/share/datasets/fashion-mnist)
#   chromium               (tests only) opens the HTML report headless to check it renders
# Needs root and apt-get; elsewhere it says what to install and carries on (the tests that need a
# package then skip with a reason).
set -uo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || echo "warning: could not install ${missing[*]}"
else
  echo "note: please install the Debian packages: ${missing[*]} (sudo apt-get install ${missing[*]})"
fi
exit 0
