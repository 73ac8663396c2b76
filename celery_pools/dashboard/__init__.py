"""The web dashboard: ``celery -A proj pools dashboard`` (the ``dashboard`` extra: Starlette and
uvicorn).

:mod:`.api` builds the JSON the pages and scripts read, in the shapes of
:mod:`celery_pools.views` (the ones ``--json`` prints and the management tasks return);
:mod:`.actions` makes the changes an operator asks for; :mod:`.auth` decides who may and which
requests are the dashboard's own; :mod:`.server` serves it all, with the pages and their static
files.
"""

from __future__ import annotations

from .auth import Credentials
from .server import create_app, serve

__all__ = ["Credentials", "create_app", "serve"]
