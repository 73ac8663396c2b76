"""The web dashboard: ``celery -A proj pools dashboard`` (the ``dashboard`` extra: Starlette and
uvicorn).

:mod:`.api` builds the JSON the pages and scripts read, in the shapes of
:mod:`celery_pools.views` (the ones ``--json`` prints and the management tasks return);
:mod:`.server` serves it, the pages and their static files.
"""

from __future__ import annotations

from .server import create_app, serve

__all__ = ["create_app", "serve"]
