#!/usr/bin/env bash
# Run every check and the whole test suite: lint, format, types, tests. Installs what it needs.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k timeout # pytest arguments are passed on
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

echo "== ruff"; ruff check celery_pools tests examples bench
echo "== ruff format"; ruff format --check celery_pools tests examples bench
echo "== mypy (strict)"; mypy
echo "== pytest"; exec python -m pytest "$@"
