#!/usr/bin/env bash
# Run the demo end to end: installs what it needs, starts its own Redis and three workers.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec python -m examples.demo "$@"
