"""Highly available Redis set-ups on loopback, made of real ``redis-server`` processes.

:class:`SentinelSet` is a master, a replica and three sentinels watching them;
:class:`ClusterSet` is a Redis Cluster of three masters, each with a replica. Both are private
to the test that makes them, and every process can be SIGKILLed.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

import redis

from tests.support.polling import wait_until
from tests.support.redis_server import RedisServer

__all__ = ["ClusterSet", "SentinelSet", "free_port_below"]

#: A cluster node's bus listens 10000 above its port, so cluster ports stay under this.
_CLUSTER_PORT_MAX = 55535


def free_port_below(limit: int = _CLUSTER_PORT_MAX, host: str = "127.0.0.1") -> int:
    """A TCP port under ``limit`` that was free a moment ago (and so was its port + 10000)."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, limit)
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((host, candidate))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port pair under {limit}")


class SentinelSet:
    """A master, one replica and three sentinels (quorum 2) for service ``name``.

    ``url`` is the ``sentinel://`` URL of the three; ``master`` and ``replica`` are the servers
    as started (after a failover, ask :meth:`current_master`).

    ``down_after_ms`` is how long a sentinel waits for a PING answer before it takes a server
    for down. A sentinel PINGs once a second and times a master it has just switched to from
    the switch: at 1000 ms, a first answer that comes late was enough for one sentinel to fail
    the new master over again, to the old master restarted as a replica and still syncing
    (empty), which lost the pools (seen in the failover test). 3000 ms leaves three PINGs.
    """

    def __init__(
        self,
        name: str = "pools",
        down_after_ms: int = 3000,
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.name = name
        self.down_after_ms = down_after_ms
        self.password = password
        self.sentinel_password = sentinel_password
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        self.master = RedisServer(extra_args=auth)
        self.replica: RedisServer | None = None
        self.sentinels: list[RedisServer] = []

    def client(self, server: RedisServer) -> redis.Redis:
        """A client of ``server`` (a data node or a sentinel) with the password it wants."""
        password = self.sentinel_password if server in self.sentinels else self.password
        return redis.Redis(server.host, server.port, password=password, decode_responses=True)

    def start(self) -> SentinelSet:
        self.master.start()
        self.replica = RedisServer(
            extra_args=[
                *self.master.extra_args,
                "--replicaof", self.master.host, str(self.master.port),
            ]
        ).start()  # fmt: skip
        client = self.client(self.replica)
        wait_until(lambda: client.info("replication")["master_link_status"] == "up", 10)
        for _ in range(3):
            sentinel = RedisServer()
            conf = Path(sentinel._tmp_dir) / "sentinel.conf"
            lines = [
                f"sentinel monitor {self.name} {self.master.host} {self.master.port} 2",
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}",
                f"sentinel failover-timeout {self.name} 5000",
                f"sentinel parallel-syncs {self.name} 1",
            ]
            if self.password:
                lines.append(f"sentinel auth-pass {self.name} {self.password}")
            if self.sentinel_password:
                lines += [
                    f"requirepass {self.sentinel_password}",
                    f"sentinel sentinel-pass {self.sentinel_password}",
                ]
            conf.write_text("\n".join(lines) + "\n")
            sentinel.config_file = conf
            sentinel.extra_args = ["--sentinel"]
            self.sentinels.append(sentinel.start())
        wait_until(self._all_know_the_replica, 15)
        return self

    def _all_know_the_replica(self) -> bool:
        for sentinel in self.sentinels:
            client = self.client(sentinel)
            replicas = client.execute_command("SENTINEL", "REPLICAS", self.name)
            others = client.execute_command("SENTINEL", "SENTINELS", self.name)
            if len(replicas) < 1 or len(others) < 2:
                return False
        return True

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in self.sentinels)

    def current_master(self) -> tuple[str, int]:
        """The master the first live sentinel names now."""
        named = self.masters_named()
        if not named:
            raise RuntimeError("no sentinel is running")
        return named[0]

    def masters_named(self) -> list[tuple[str, int]]:
        """The master each live sentinel names now, in the sentinels' order."""
        named = []
        for sentinel in self.sentinels:
            if sentinel.running:
                client = self.client(sentinel)
                host, port = client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name
                )
                named.append((str(host), int(port)))
        return named

    def servers(self) -> list[RedisServer]:
        return [self.master, *([self.replica] if self.replica else []), *self.sentinels]

    def cleanup(self) -> None:
        for server in self.servers():
            server.cleanup()


class ClusterSet:
    """A Redis Cluster of ``masters`` masters, each with ``replicas`` replicas, on loopback."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000) -> None:
        self.masters = masters
        self.replicas = replicas
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(node_timeout_ms)]
        self.nodes = [
            RedisServer(port=free_port_below(), extra_args=args)
            for _ in range(masters * (1 + replicas))
        ]

    def start(self) -> ClusterSet:
        for node in self.nodes:
            node.start()
        # Slots first (so the masters are the first nodes), then the replicas.
        step = 16384 // self.masters
        first = self.nodes[0].client(decode_responses=True)
        for index, node in enumerate(self.nodes[: self.masters]):
            end = 16383 if index == self.masters - 1 else (index + 1) * step - 1
            node.client().execute_command("CLUSTER", "ADDSLOTS", *range(index * step, end + 1))
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", node.host, node.port)
        wait_until(lambda: self._known_everywhere(len(self.nodes)), 20)
        for index, node in enumerate(self.nodes[self.masters :]):
            master = self.nodes[index % self.masters]
            master_id = master.client(decode_responses=True).execute_command("CLUSTER", "MYID")
            node.client().execute_command("CLUSTER", "REPLICATE", master_id)
        wait_until(self._ok, 30)
        return self

    def _known_everywhere(self, count: int) -> bool:
        for node in self.nodes:
            nodes = node.client(decode_responses=True).execute_command("CLUSTER", "NODES")
            if len(str(nodes).strip().splitlines()) < count:
                return False
        return True

    def _ok(self) -> bool:
        for node in self.nodes:
            info = node.client(decode_responses=True).execute_command("CLUSTER", "INFO")
            if "cluster_state:ok" not in str(info):
                return False
        replicating = 0
        for node in self.nodes[self.masters :]:
            replication = node.client(decode_responses=True).info("replication")
            replicating += replication.get("master_link_status") == "up"
        return replicating == len(self.nodes) - self.masters

    @property
    def url(self) -> str:
        return ";".join(f"redis+cluster://127.0.0.1:{n.port}" for n in self.nodes[:2])

    def owner_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now (asked of a live node)."""
        for node in self.nodes:
            if not node.running:
                continue
            client = node.client(decode_responses=True)
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for entry in client.execute_command("CLUSTER", "SLOTS"):
                start, end, master = entry[0], entry[1], entry[2]
                if start <= slot <= end:
                    return self._by_port(int(master[1]))
        raise RuntimeError("no cluster node is running")

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A replica of ``master``, as the cluster says now."""
        master_id = master.client(decode_responses=True).execute_command("CLUSTER", "MYID")
        for node in self.nodes:
            if node is master or not node.running:
                continue
            info: Any = node.client(decode_responses=True).info("replication")
            if info.get("role") == "slave" and int(info.get("master_port", 0)) == master.port:
                return node
        raise RuntimeError(f"no replica of the master {master_id} on port {master.port}")

    def _by_port(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
