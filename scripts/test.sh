#!/usr/bin/env bash
# Run every check and the whole test suite: lint, format, types, tests (and part of them against
# the oldest releases supported, scripts/test_oldest.sh). Installs what it needs.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k timeout # pytest arguments are passed on
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

# Debian's Chromium for the dashboard's browser tests (Playwright drives it; no browser download).
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "apt-get could not install chromium: the dashboard's browser tests will fail" >&2
  else
    echo "no chromium: install Debian's chromium for the dashboard's browser tests" >&2
  fi
fi

# The deployment tests: hosts in network namespaces (iproute2), a clock-skew library built with
# the C compiler, a CA made with openssl.
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v cc >/dev/null || missing+=(gcc)
command -v openssl >/dev/null || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "apt-get could not install ${missing[*]}: the deployment tests skip" >&2
  else
    echo "missing ${missing[*]}: the deployment tests skip" >&2
  fi
fi

echo "== ruff"; ruff check celery_pools tests examples bench
echo "== ruff format"; ruff format --check celery_pools tests examples bench
echo "== mypy (strict)"; mypy
echo "== pytest"; python -m pytest "$@"
# The whole suite also runs its version-sensitive part against the oldest releases supported.
if [ "$#" -eq 0 ]; then
  echo "== pytest, oldest supported releases"; bash "$ROOT/scripts/test_oldest.sh"
fi
