"""The Lua scripts against their catalogue: every key and argument named once in Python
(``celery_pools.store.scripts.SCRIPTS``), bound by name in each script, in the same order, with
the key each binding's comment documents; shared pieces inlined once; every script loads."""

from __future__ import annotations

import re
from importlib.resources import files

import pytest
import redis

from celery_pools.store.keys import KeySpace
from celery_pools.store.scripts import SCRIPT_NAMES, SCRIPTS, script_source

_UNPACKED = re.compile(r"^local ([\w,\s]+?)\s*=\s*unpack\((KEYS|ARGV)\)", re.MULTILINE)
_VARIADIC = re.compile(r"^local (\w+) = (KEYS|ARGV\[1\])$", re.MULTILINE)
_INCLUDE = re.compile(r"^-- include: (\S+)$", re.MULTILINE)


def _own_source(name: str) -> str:
    """The script's own file, pieces not inlined."""
    return files("celery_pools.store").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def _header(name: str) -> str:
    """The script's header: its leading comment lines, the comment marks taken off."""
    lines = _own_source(name).split("\n")
    assert lines[0].startswith(f"-- {name}.lua: "), name
    header = []
    for line in lines:
        if not line.startswith("--"):
            break
        header.append(line[3:] if line.startswith("-- ") else line[2:])
    return "\n".join(header)


def _documented(name: str, section: str) -> list[tuple[str, str]]:
    """``(name, what follows it)`` for each entry of the header's ``Keys:`` or ``Arguments:``."""
    header = _header(name)
    assert f"\n{section}:\n" in header, f"{name}.lua documents no {section}"
    block = header.split(f"\n{section}:\n", 1)[1].split("\n\n", 1)[0]
    assert block.strip(), f"{name}.lua's {section} section is empty"
    return re.findall(r"^ {2}(\w+) {2,}(.*)$", block, re.MULTILINE)


def _bound(name: str, kind: str) -> list[str]:
    """The names the script binds its KEYS or ARGV to, in order."""
    source = _own_source(name)
    if SCRIPTS[name].variadic:
        return [local for local, what in _VARIADIC.findall(source) if what.startswith(kind)]
    found = [names for names, what in _UNPACKED.findall(source) if what == kind]
    assert len(found) == 1, f"{name}.lua binds {kind} {len(found)} times"
    return [part.strip() for part in found[0].split(",")]


def _template(name: str) -> str:
    """How a script's header writes the key called ``name``: ``{p}:pool:<name>:holders``."""
    return KeySpace("p").key(name, "<name>", "<old>")


def test_every_script_file_is_in_the_catalogue():
    on_disk = {
        path.name.removesuffix(".lua")
        for path in files("celery_pools.store").joinpath("lua").iterdir()
        if path.name.endswith(".lua")
    }
    assert on_disk == set(SCRIPT_NAMES)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_a_script_documents_and_binds_its_keys_in_the_catalogues_order(name):
    keys = SCRIPTS[name].keys
    documented = _documented(name, "Keys")
    assert [key for key, _ in documented] == list(keys)
    assert [text.split()[0] for _, text in documented] == [_template(key) for key in keys]
    assert _bound(name, "KEYS") == list(keys)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_a_script_documents_and_binds_its_arguments_in_the_catalogues_order(name):
    args = SCRIPTS[name].args
    assert [arg for arg, _ in _documented(name, "Arguments")] == list(args)
    assert _bound(name, "ARGV") == list(args)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_a_script_reads_keys_and_arguments_only_through_their_names(name):
    """Outside the bindings no ``KEYS[n]`` or ``ARGV[n]``, and no name of a key or argument is
    declared again (a parameter or a local of that name would hide the binding)."""
    script = SCRIPTS[name]
    body = re.sub(r"--[^\n]*", "", _own_source(name))
    body = _UNPACKED.sub("", _VARIADIC.sub("", body))
    if script.variadic:
        body = body.replace("ARGV[i + 1]", "")  # the items, after the named arguments
    assert re.findall(r"\b(?:KEYS|ARGV)\b", body) == []
    bound = set(script.keys) | set(script.args)
    declared = re.findall(r"\blocal\s+([\w\s,]+?)\s*(?:=|$)", body, re.MULTILINE)
    declared += re.findall(r"\bfunction\s*\w*\s*\(([^)]*)\)", body)
    declared += re.findall(r"\bfor\s+([\w\s,]+?)\s+(?:=|in)\b", body)
    names = {part.strip() for group in declared for part in group.split(",")}
    assert names.isdisjoint(bound), names & bound


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_a_script_includes_its_pieces_before_it_binds_anything(name):
    own = _own_source(name)
    includes = [match.start() for match in _INCLUDE.finditer(own)]
    first_binding = _UNPACKED.search(own) or _VARIADIC.search(own)
    assert first_binding is not None
    assert all(position < first_binding.start() for position in includes)
    assert "lib/clock.lua" in _INCLUDE.findall(own), "every reply carries the Redis clock"


def test_scripts_inline_the_lua_pieces_they_include():
    """Shared Lua lives in one file each and is inlined, once, into every script that includes
    it; no include line reaches Redis."""
    for name in SCRIPT_NAMES:
        source = script_source(name)
        assert not re.search(r"^\s*-- include:", source, re.MULTILINE), name
        assert source.count("local function redis_clock(") == 1, name
    for name, piece in [
        ("acquire", "take_rate_token"),
        ("handoff", "take_rate_token"),
        ("acquire", "sweep_lapsed"),
        ("handoff", "sweep_lapsed"),
        ("acquire", "observe"),
        ("release", "observe"),
        ("clear", "end_parked"),
        ("delete", "end_parked"),
        ("clear", "end_handoffs"),
        ("delete", "end_handoffs"),
    ]:
        assert script_source(name).count(f"local function {piece}(") == 1, (name, piece)


def test_every_script_loads_into_redis(redis_server):
    """Each script, pieces inlined, compiles in the server's Lua."""
    client = redis.Redis.from_url(redis_server.url(), decode_responses=True)
    try:
        for name in SCRIPT_NAMES:
            client.script_load(script_source(name))
    finally:
        client.close()
