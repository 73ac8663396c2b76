"""``celery -A proj pools ...``: manage pools from the command line.

Installed as a ``celery`` subcommand through the ``celery.commands`` entry point. Every command
talks to the pools' Redis directly (no worker needs to be running):

- read (:mod:`.read`): ``list``, ``show NAME`` (with rate limits, metrics and suspicious holders),
  ``watch [NAME]``;
- write (:mod:`.write`): ``create``, ``update`` (limit, timeout, waiting mode), ``delete``,
  ``assign``, ``unassign``, ``clear``, ``release TASK_ID`` (an abandoned slot);
- rate limits (:mod:`.rates`): ``rate INSTANCE RATE``, ``unrate INSTANCE``,
  ``pause INSTANCE SECONDS``, ``resume INSTANCE``;
- pools as code (:mod:`.code`): ``export FILE``, ``import FILE``;
- operations (:mod:`.ops`): ``advise NAME`` (sizing), ``exporter --port N`` (Prometheus),
  ``acl USER`` (a Redis ACL for workers);
- the web dashboard (:mod:`.dashboard`): ``dashboard [--port N] [--addr A]``.

``--json`` prints the shapes of :mod:`celery_pools.views`, which the management tasks return.
Errors go to stderr as ``Error: <message>`` with exit status 1 (2 for a usage error).
"""

from __future__ import annotations

from . import code, dashboard, ops, rates, read, write  # noqa: F401  (each registers its commands)
from .group import pools

__all__ = ["pools"]
