"""The Redis a URL names: one server, a master that Redis Sentinel watches, or a Redis Cluster.

URLs, as Celery and kombu spell them where they can:

``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path?db=N``
    One server, parsed by redis-py (its query arguments apply: ``?ssl_ca_certs=/ca.pem``,
    ``?ssl_cert_reqs=required``; Celery's spelling ``CERT_REQUIRED`` is accepted too).
``sentinel://[[user]:password@]host:port[/db][;sentinel://host:port...]``
    The master of a Sentinel service: the sentinels to ask (several, separated by ``;``, as
    Celery's broker takes them), the service's name in the ``master_name`` option, the
    sentinels' own password in ``sentinel_kwargs``. The user and password in the URL are the
    master's, as in kombu. A connection that breaks asks the sentinels again, so a failover is
    followed.
``redis+cluster://[[user]:password@]host:port[;host:port...]``, ``rediss+cluster://...``
    A Redis Cluster, found from one or more of its nodes. Every key celery-pools uses shares
    one hash tag (:mod:`~celery_pools.store.keys`), so they all live in one hash slot: the
    store talks to the master that owns that slot, and finds the slot's new owner after a
    failover or a resharding (``MOVED``, a lost connection).

:func:`connect` builds an :class:`Endpoint`: the client the store uses now and how to find
the right server again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.sentinel import Sentinel

from celery_pools.errors import PoolBackendError, PoolConfigError
from celery_pools.settings import REDIS_SCHEMES, redacted

__all__ = [
    "TRANSPORT_OPTIONS",
    "Endpoint",
    "connect",
]

logger = logging.getLogger(__name__)

_CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

#: The options (``pools_redis_transport_options``) :func:`connect` takes, and what each is.
TRANSPORT_OPTIONS = {
    "master_name": "the Sentinel service whose master holds pool state (sentinel:// only)",
    "sentinel_kwargs": "connection options for the sentinels themselves, such as their password",
    "username": "the Redis user (ACL), if not in the URL",
    "password": "the Redis password, if not in the URL",
    "ssl": "True to speak TLS (sentinel://: to the master and replicas)",
    "ssl_ca_certs": "the CA bundle that signs the server's certificate",
    "ssl_certfile": "a client certificate, for servers that ask for one",
    "ssl_keyfile": "the client certificate's key",
    "ssl_cert_reqs": "'required' (the default), 'optional' or 'none'",
    "ssl_check_hostname": "whether the server's certificate must name its host",
}

# Errors after which a cluster's slot may have a new owner (and a sentinel's master may too).
_MOVED_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    MovedError,
    ClusterDownError,
    TryAgainError,
    ReadOnlyError,
)

# Celery's spellings of ssl_cert_reqs -> redis-py's.
_CERT_REQS = {"CERT_REQUIRED": "required", "CERT_OPTIONAL": "optional", "CERT_NONE": "none"}


class Endpoint:
    """Where the store's Redis is: the client to use now, and how to find the server again.

    ``client`` is a plain :class:`redis.Redis` in every case; for a cluster it is the client of
    the master that owns ``route_key``'s hash slot, and :meth:`rebind` asks the cluster again
    after an error that says the slot may have moved.
    """

    def __init__(
        self,
        client: redis.Redis,
        location: str,
        cluster: RedisCluster | None = None,
        route_key: str = "",
    ) -> None:
        self.client = client
        #: The URL, without passwords.
        self.location = location
        self.cluster = cluster
        self.route_key = route_key

    @classmethod
    def of(cls, client: redis.Redis) -> Endpoint:
        """An endpoint for a client made elsewhere (one server, or a Sentinel master)."""
        kwargs = client.connection_pool.connection_kwargs
        if "path" in kwargs:
            location = f"unix://{kwargs['path']}"
        elif "host" in kwargs:
            db = kwargs.get("db", 0)
            location = f"redis://{kwargs['host']}:{kwargs.get('port', 6379)}/{db}"
        else:
            location = "redis (a Sentinel master)"
        return cls(client, location)

    def rebind(self, error: BaseException) -> bool:
        """After ``error``: for a cluster whose slot may have moved, find its owner again and
        make :attr:`client` its client. True if the client changed."""
        if self.cluster is None or not isinstance(error, _MOVED_ERRORS):
            return False
        try:
            self.cluster.nodes_manager.initialize()
            client = _slot_owner(self.cluster, self.route_key)
        except redis.RedisError as exc:  # the cluster is not answering yet: the next call tries
            logger.warning("celery-pools: could not find the new owner of the pools' slot: %s", exc)
            return False
        changed = client is not self.client
        self.client = client
        return changed


def _slot_owner(cluster: RedisCluster, key: str) -> redis.Redis:
    node = cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
    client = node.redis_connection or cluster.get_redis_connection(node)
    return client


def connect(
    url: str,
    *,
    route_key: str,
    socket_timeout: float = 5.0,
    options: Mapping[str, Any] | None = None,
) -> Endpoint:
    """The endpoint ``url`` names (see the module's docstring for the URLs).

    ``route_key`` is a key of the store's (any: they share a hash slot); ``options`` are the
    :data:`TRANSPORT_OPTIONS`. Raises :class:`PoolConfigError` naming the URL or option that is
    wrong. A server or a Sentinel master is connected at the first command; a cluster is asked
    for its slots at once (:class:`PoolBackendError` if none of its nodes answers).
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(TRANSPORT_OPTIONS))
    if unknown:
        raise PoolConfigError.invalid(
            "pools_redis_transport_options",
            unknown[0],
            "one of " + ", ".join(sorted(TRANSPORT_OPTIONS)),
        )
    if not url.startswith(REDIS_SCHEMES):
        raise PoolConfigError.invalid(
            "pools_redis_url", redacted(url), "a URL of " + ", ".join(REDIS_SCHEMES)
        )
    common: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 2.0),
        "health_check_interval": 30,
    }
    master_name = options.pop("master_name", None)
    sentinel_kwargs = options.pop("sentinel_kwargs", None)
    if "ssl_cert_reqs" in options:
        reqs = options["ssl_cert_reqs"]
        options["ssl_cert_reqs"] = _CERT_REQS.get(reqs, reqs)
    location = redacted(url)
    if url.startswith("sentinel://"):
        return _sentinel(url, location, master_name, sentinel_kwargs, {**common, **options})
    if master_name is not None or sentinel_kwargs is not None:
        raise PoolConfigError.invalid(
            "pools_redis_transport_options",
            "master_name" if master_name is not None else "sentinel_kwargs",
            "only with a sentinel:// pools_redis_url",
        )
    if url.startswith(_CLUSTER_SCHEMES):
        return _cluster(url, location, route_key, {**common, **options})
    url = _celery_cert_reqs(url)
    return Endpoint(redis.Redis.from_url(url, **common, **options), location)


def _celery_cert_reqs(url: str) -> str:
    for celery_name, name in _CERT_REQS.items():
        url = url.replace(f"ssl_cert_reqs={celery_name}", f"ssl_cert_reqs={name}")
    return url


def _hosts(url: str, scheme: str) -> list[tuple[str, int, Any]]:
    """Each ``;``-separated part of ``url``: host, port and its urlsplit."""
    hosts = []
    for raw in url.split(";"):
        part = raw.strip()
        if not part:
            continue
        if not part.startswith(scheme):
            raise PoolConfigError.invalid(
                "pools_redis_url", redacted(url), f"every ';'-separated part a {scheme} URL"
            )
        split = urlsplit(part)
        try:
            port = split.port or (26379 if scheme == "sentinel://" else 6379)
        except ValueError:
            raise PoolConfigError.invalid(
                "pools_redis_url", redacted(url), "host:port with a port number"
            ) from None
        if not split.hostname:
            raise PoolConfigError.invalid("pools_redis_url", redacted(url), "a host in every part")
        hosts.append((split.hostname, port, split))
    return hosts


def _credentials(split: Any, options: dict[str, Any]) -> None:
    if split.username:
        options.setdefault("username", unquote(split.username))
    if split.password:
        options.setdefault("password", unquote(split.password))


def _sentinel(
    url: str,
    location: str,
    master_name: Any,
    sentinel_kwargs: Any,
    options: dict[str, Any],
) -> Endpoint:
    if not isinstance(master_name, str) or not master_name:
        raise PoolConfigError.invalid(
            "pools_redis_transport_options['master_name']",
            master_name,
            "the name of the Sentinel service (sentinel monitor <name> ...) for a sentinel:// URL",
        )
    if sentinel_kwargs is not None and not isinstance(sentinel_kwargs, Mapping):
        raise PoolConfigError.invalid(
            "pools_redis_transport_options['sentinel_kwargs']",
            type(sentinel_kwargs).__name__,
            "a mapping of connection options for the sentinels (password, username, ...)",
        )
    hosts = _hosts(url, "sentinel://")
    first = hosts[0][2]
    _credentials(first, options)
    db = first.path.strip("/")
    if db:
        if not db.isdigit():
            raise PoolConfigError.invalid(
                "pools_redis_url", location, "a database number after '/'"
            )
        options["db"] = int(db)
    sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # typed in redis 8.2
        [(host, port) for host, port, _ in hosts],
        sentinel_kwargs={
            "socket_timeout": options["socket_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
            **dict(sentinel_kwargs or {}),
        },
        **options,
    )
    client = sentinel.master_for(master_name)  # type: ignore[no-untyped-call, unused-ignore]
    return Endpoint(client, f"{location} (service {master_name!r})")


def _cluster(url: str, location: str, route_key: str, options: dict[str, Any]) -> Endpoint:
    tls = url.startswith("rediss+")
    hosts = _hosts(url, "rediss+cluster://" if tls else "redis+cluster://")
    _credentials(hosts[0][2], options)
    if tls:
        options["ssl"] = True
    try:
        nodes = [ClusterNode(host, port) for host, port, _ in hosts]  # type: ignore[no-untyped-call]
        cluster = RedisCluster(startup_nodes=nodes, **options)
        client = _slot_owner(cluster, route_key)
    except (redis.RedisError, RedisClusterException) as exc:
        raise PoolBackendError(
            f"the Redis Cluster at {location} could not be reached: {exc}"
        ) from exc
    return Endpoint(client, location, cluster, route_key)
