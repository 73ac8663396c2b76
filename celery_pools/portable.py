"""Pools and associations as code: export them to a JSON or YAML document, import one back.

The document (``version`` 1) lists every pool with its limit, timeout, waiting mode and
instances, and every connector instance's rate limit::

    version: 1
    pools:
      netsuite:
        limit: 10
        timeout: 30
        wait: handoff
        instances: [netsuite-prod, netsuite-sandbox]
    rate_limits:
      netsuite-prod: {rate: 60/m, burst: 5}

``timeout`` defaults to 30, ``wait`` to ``countdown``, ``instances`` and ``rate_limits`` to none
and ``burst`` to 0; a rate limit may also be given as the bare rate: ``netsuite-prod: 60/m``.

Importing makes Redis match the document, one atomic step per pool, association and rate limit,
and is idempotent: a second import of the same document changes nothing. Pools, associations and
rate limits that are not in the document are left alone unless ``prune`` is asked for, which
deletes those pools (their waiting tasks fail with :class:`~celery_pools.errors.PoolDeletedError`)
and removes those associations and rate limits. YAML needs PyYAML
(``pip install 'celery-pools[yaml]'``).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .errors import PoolConfigError, PoolExistsError, PoolNotFoundError
from .manager import PoolManager
from .models import Model, PoolSpec, check_instance_name, check_pool_name
from .ratelimit import RateLimit, parse_rate

__all__ = [
    "FORMATS",
    "Change",
    "ImportReport",
    "PoolSpec",
    "PoolsDocument",
    "RateLimitSpec",
    "apply_document",
    "dumps",
    "export_document",
    "format_for",
    "loads",
    "plan_document",
    "rate_text",
]

#: The document formats: ``json`` and ``yaml``.
FORMATS = ("json", "yaml")

Format = Literal["json", "yaml"]
Action = Literal["create", "change", "unchanged", "keep", "remove"]


def rate_text(limit: RateLimit) -> str:
    """A rate limit's rate without its burst, as :func:`parse_rate` reads it: ``"60/m"``."""
    return str(limit.model_copy(update={"burst": 0}))


class RateLimitSpec(Model):
    """One connector instance's rate limit in a document: ``rate`` (``"60/m"``) and ``burst``."""

    rate: str
    burst: int = 0

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        # ``instance: 60/m`` is short for ``instance: {rate: 60/m}``.
        return {"rate": value} if isinstance(value, str) else value

    @field_validator("rate", mode="before")
    @classmethod
    def _rate(cls, value: object) -> str:
        return rate_text(parse_rate(value))

    @field_validator("burst", mode="before")
    @classmethod
    def _burst(cls, value: object) -> int:
        return parse_rate("1/s", value).burst

    def limit(self) -> RateLimit:
        """The rate limit this spec describes."""
        return parse_rate(self.rate, self.burst)

    @classmethod
    def of(cls, limit: RateLimit) -> RateLimitSpec:
        """The spec of a rate limit read from Redis."""
        return cls(rate=rate_text(limit), burst=limit.burst)


class PoolsDocument(Model):
    """Every pool, association and rate limit, as exported and imported."""

    version: Literal[1] = 1
    pools: dict[str, PoolSpec] = Field(default_factory=dict)
    rate_limits: dict[str, RateLimitSpec] = Field(default_factory=dict)

    @field_validator("pools", mode="before")
    @classmethod
    def _pool_names(cls, value: object) -> object:
        if isinstance(value, dict):
            for name in value:
                check_pool_name(name, "pool name")
        return value

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _rate_limit_instances(cls, value: object) -> object:
        if value is None:  # ``rate_limits:`` with nothing under it, in YAML
            return {}
        if isinstance(value, dict):
            for instance in value:
                check_instance_name(instance, "rate_limits instance")
        return value

    @model_validator(mode="after")
    def _one_pool_per_instance(self) -> PoolsDocument:
        seen: dict[str, str] = {}
        for name, spec in self.pools.items():
            for instance in spec.instances:
                if instance in seen:
                    raise PoolConfigError.invalid(
                        f"instance {instance!r}",
                        [seen[instance], name],
                        "an instance belongs to at most one pool",
                    )
                seen[instance] = name
        return self

    def associations(self) -> dict[str, str]:
        """Every instance -> pool association in the document."""
        return {instance: name for name, spec in self.pools.items() for instance in spec.instances}

    def to_data(self) -> dict[str, Any]:
        """The document as plain data (whole-second timeouts written as integers)."""
        return {
            "version": self.version,
            "pools": {
                name: {
                    "limit": spec.limit,
                    "timeout": _number(spec.timeout),
                    "wait": spec.wait,
                    "instances": list(spec.instances),
                }
                for name, spec in sorted(self.pools.items())
            },
            "rate_limits": {
                instance: _rate_settings(spec.limit())
                for instance, spec in sorted(self.rate_limits.items())
            },
        }


def _number(value: float) -> float | int:
    return int(value) if value.is_integer() else value


def export_document(manager: PoolManager) -> PoolsDocument:
    """Every pool of ``manager`` and its associations, as a document."""
    by_pool: dict[str, list[str]] = {}
    for instance, pool in manager.associations().items():
        by_pool.setdefault(pool, []).append(instance)
    return PoolsDocument(
        pools={
            pool.name: PoolSpec(
                limit=pool.limit,
                timeout=pool.timeout,
                wait=pool.wait,
                instances=by_pool.get(pool.name, []),
            )
            for pool in manager.list()
        },
        rate_limits={
            instance: RateLimitSpec.of(limit) for instance, limit in manager.rate_limits().items()
        },
    )


def format_for(path: str, text: str | None = None) -> Format:
    """The format of a file by its name (``.json``, ``.yaml``/``.yml``), else by its content."""
    lowered = path.lower()
    if lowered.endswith(".json"):
        return "json"
    if lowered.endswith((".yaml", ".yml")):
        return "yaml"
    if text is not None and not text.lstrip().startswith(("{", "[")):
        return "yaml"
    return "json"


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - depends on the environment
        raise PoolConfigError(
            "YAML needs PyYAML: pip install 'celery-pools[yaml]' (or use a .json file)"
        ) from None
    return yaml


def dumps(document: PoolsDocument, fmt: Format = "json") -> str:
    """The document as JSON or YAML text."""
    data = document.to_data()
    if fmt == "yaml":
        return str(_yaml().safe_dump(data, sort_keys=False, default_flow_style=False))
    return json.dumps(data, indent=2) + "\n"


def loads(text: str, fmt: Format = "json", *, source: str = "document") -> PoolsDocument:
    """Parse and validate a document; any problem raises :class:`PoolConfigError`."""
    try:
        if fmt == "yaml":
            yaml = _yaml()
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise PoolConfigError(f"{source} is not valid YAML: {exc}") from None
        else:
            data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PoolConfigError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PoolConfigError.invalid(
            source, type(data).__name__, "a mapping with 'version: 1', 'pools', 'rate_limits'"
        )
    try:
        return PoolsDocument.parse(data)
    except PoolConfigError as exc:
        raise PoolConfigError(f"{source}: {exc}", field=exc.field, value=exc.value) from None


@dataclass(frozen=True)
class Change:
    """One step of an import: what happens (or happened) to a pool, association or rate limit.

    ``action`` is ``create``, ``change``, ``unchanged``, ``keep`` (in Redis, not in the
    document, left alone) or ``remove`` (in Redis, not in the document, removed by prune).
    ``kind`` is ``pool``, ``association`` or ``rate_limit`` (``name`` is then the instance);
    ``before`` and ``after`` are what it was and is (a pool's ``{"limit", "timeout", "wait"}``,
    an association's pool name, a rate limit's ``{"rate", "burst"}``), None when absent.
    """

    kind: Literal["pool", "association", "rate_limit"]
    name: str
    action: Action
    before: Any = None
    after: Any = None


@dataclass
class ImportReport:
    """What an import did (or, in a dry run, would do)."""

    dry_run: bool
    prune: bool
    changes: list[Change] = field(default_factory=list)

    def count(self, action: str) -> int:
        """How many changes have ``action``."""
        return sum(1 for change in self.changes if change.action == action)

    def to_data(self) -> dict[str, Any]:
        """The report as plain JSON-able data."""
        return {
            "dry_run": self.dry_run,
            "prune": self.prune,
            "changes": [
                {
                    "kind": c.kind,
                    "name": c.name,
                    "action": c.action,
                    "before": c.before,
                    "after": c.after,
                }
                for c in self.changes
            ],
            "counts": {
                action: self.count(action)
                for action in ("create", "change", "unchanged", "keep", "remove")
            },
        }


def _settings(limit: int, timeout: float, wait: str) -> dict[str, Any]:
    return {"limit": limit, "timeout": _number(timeout), "wait": wait}


def _rate_settings(limit: RateLimit) -> dict[str, Any]:
    return {"rate": rate_text(limit), "burst": limit.burst}


def plan_document(
    manager: PoolManager, document: PoolsDocument, *, prune: bool = False
) -> list[Change]:
    """What importing ``document`` would do to the pools of ``manager`` now (nothing written)."""
    current = {pool.name: pool for pool in manager.list()}
    current_assoc = manager.associations()
    current_rates = {
        instance: _rate_settings(limit) for instance, limit in manager.rate_limits().items()
    }
    changes: list[Change] = []
    for name, spec in sorted(document.pools.items()):
        wanted = _settings(spec.limit, spec.timeout, spec.wait)
        pool = current.get(name)
        if pool is None:
            changes.append(Change("pool", name, "create", None, wanted))
            continue
        have = _settings(pool.limit, pool.timeout, pool.wait)
        settled: Action = "unchanged" if have == wanted else "change"
        changes.append(Change("pool", name, settled, have, wanted))
    for instance, pool_name in sorted(document.associations().items()):
        before = current_assoc.get(instance)
        action: Action = "change"
        if before is None:
            action = "create"
        elif before == pool_name:
            action = "unchanged"
        changes.append(Change("association", instance, action, before, pool_name))
    for instance, rate_spec in sorted(document.rate_limits.items()):
        wanted_rate = _rate_settings(rate_spec.limit())
        have_rate = current_rates.get(instance)
        action = "change"
        if have_rate is None:
            action = "create"
        elif have_rate == wanted_rate:
            action = "unchanged"
        changes.append(Change("rate_limit", instance, action, have_rate, wanted_rate))
    leftover: Action = "remove" if prune else "keep"
    wanted_assoc = document.associations()
    for instance, pool_name in sorted(current_assoc.items()):
        if instance not in wanted_assoc:
            after = None if prune else pool_name
            changes.append(Change("association", instance, leftover, pool_name, after))
    for name, pool in sorted(current.items()):
        if name not in document.pools:
            have = _settings(pool.limit, pool.timeout, pool.wait)
            changes.append(Change("pool", name, leftover, have, None if prune else have))
    for instance, have_rate in sorted(current_rates.items()):
        if instance not in document.rate_limits:
            after_rate = None if prune else have_rate
            changes.append(Change("rate_limit", instance, leftover, have_rate, after_rate))
    return changes


def apply_document(
    manager: PoolManager, document: PoolsDocument, *, prune: bool = False, dry_run: bool = False
) -> ImportReport:
    """Make the pools of ``manager`` match ``document``; see the module docstring.

    Pools are created or changed first (each in one atomic step), then associations, then rate
    limits; with ``prune``, associations, pools and rate limits that are not in the document are
    removed last.
    """
    report = ImportReport(dry_run=dry_run, prune=prune)
    for planned in plan_document(manager, document, prune=prune):
        report.changes.append(planned if dry_run else _apply(manager, document, planned))
    return report


def _apply(manager: PoolManager, document: PoolsDocument, change: Change) -> Change:
    if change.kind == "pool":
        if change.action == "create":
            spec = document.pools[change.name]
            try:
                manager.create(change.name, limit=spec.limit, timeout=spec.timeout, wait=spec.wait)
            except PoolExistsError:
                # Created by someone else since the plan was made: make it match instead.
                pool = manager.get(change.name)
                before = _settings(pool.limit, pool.timeout, pool.wait)
                if before != change.after:
                    manager.update(
                        change.name, limit=spec.limit, timeout=spec.timeout, wait=spec.wait
                    )
                    return Change("pool", change.name, "change", before, change.after)
                return Change("pool", change.name, "unchanged", before, change.after)
        elif change.action == "change":
            spec = document.pools[change.name]
            manager.update(change.name, limit=spec.limit, timeout=spec.timeout, wait=spec.wait)
        elif change.action == "remove":
            # Deleted by someone else meanwhile: the outcome is the same.
            with contextlib.suppress(PoolNotFoundError):
                manager.delete(change.name)
    elif change.kind == "rate_limit":
        if change.action in ("create", "change"):
            manager.set_rate_limit(change.name, document.rate_limits[change.name].limit())
        elif change.action == "remove":
            manager.remove_rate_limit(change.name)
    elif change.action in ("create", "change"):
        manager.assign(change.name, str(change.after))
    elif change.action == "remove":
        manager.unassign(change.name)
    return change
