"""Who may change pools through the dashboard, and which requests count as its own.

A change needs an operator credential: the bearer token of ``pools_dashboard_token``
(``Authorization: Bearer <token>``) or a user of ``pools_dashboard_users`` (HTTP Basic). The
server never sends a ``WWW-Authenticate`` challenge, so a browser never remembers a credential
and sends it on its own; the page sends the one its operator typed in, from script.

A state-changing request must also come from the dashboard's own pages: a browser's
``Sec-Fetch-Site`` must say ``same-origin`` (or ``none``, typed in the address bar) and its
``Origin`` must name the dashboard's host and port, when the browser sends them (current
browsers do on a cross-site ``POST``, ``PUT``, ``PATCH`` or ``DELETE``); and its body must be
JSON, which a cross-site form cannot send.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["Credentials", "cross_site"]


@dataclass(frozen=True)
class Credentials:
    """The operator credentials a dashboard accepts (none: it only reads)."""

    token: str | None = None
    users: Mapping[str, str] = field(default_factory=dict)

    @property
    def configured(self) -> bool:
        """Whether any credential is set up."""
        return bool(self.token) or bool(self.users)

    def accept(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries one of these credentials."""
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.token:
            return hmac.compare_digest(value.encode(), self.token.encode())
        if scheme == "basic" and self.users:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            expected = self.users.get(user)
            # Compared even for an unknown user, so the answer takes as long either way.
            matches = hmac.compare_digest(password.encode(), (expected or "\0").encode())
            return expected is not None and matches
        return False


def cross_site(headers: Mapping[str, str], host: str) -> str | None:
    """Why a state-changing request with ``headers`` (lower-case names) does not come from the
    dashboard's own pages at ``host`` (the request's ``Host``), or None when it does.

    ``Origin`` is compared by host and port only: behind a TLS proxy the page's origin is
    ``https://`` while the dashboard itself is served over plain HTTP.
    """
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"a {fetch_site} request (Sec-Fetch-Site)"
    sent_origin = headers.get("origin")
    if sent_origin is not None and urlsplit(sent_origin).netloc != host:
        return f"a request from {sent_origin!r}"
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return f"a body of type {content_type or 'none'!r} (only application/json is accepted)"
    return None
