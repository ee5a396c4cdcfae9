"""bridge.rules is pure: no Twisted, no etcd client, no sockets, threads, clocks or randomness.

Checked two ways: a fresh interpreter imports every module of the package and reports
what got loaded and which module's import statement loaded it; and each module's
source is read for what it imports. `time` is loaded by the interpreter itself at
start-up and `datetime` by `bridge.model` (for `iso_time`, which no rule calls), so
for those two the test checks who imports them, not whether they are loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import bridge.rules

RULES = Path(bridge.rules.__file__).parent
MODULES = sorted(f"bridge.rules.{p.stem}" for p in RULES.glob("*.py") if p.stem != "__init__")

#: Never loaded, whoever would import them.
BANNED = (
    "twisted",
    "pyetcd",
    "etcd3",
    "grpc",
    "google",
    "socket",
    "ssl",
    "select",
    "selectors",
    "threading",
    "_thread_pool",
    "asyncio",
    "random",
    "subprocess",
)
#: Loaded only by these importers (module names), never by a rule.
CLOCKS = {
    "time": {"datetime", "_datetime"},
    "datetime": {"bridge.model"},
    "_datetime": {"datetime"},
}
#: What a rule module may import.
ALLOWED = {
    "__future__", "collections.abc", "dataclasses", "enum", "hashlib", "typing",
    "bridge", "bridge.documents", "bridge.model", "bridge.etcd.ops",
    *MODULES, "bridge.rules",
}  # fmt: skip

PROBE = """
import builtins, json, sys
edges = []
real = builtins.__import__
def spy(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "?")
    if level:
        base = importer if (globals or {}).get("__path__") else importer.rpartition(".")[0]
        name = base + ("." + name if name else "")
    edges.append((importer, name))
    return real(name, globals, locals, fromlist, 0 if level else level)
before = set(sys.modules)
builtins.__import__ = spy
for module in sys.argv[1:]:
    __import__(module)
builtins.__import__ = real
print(json.dumps({"loaded": sorted(set(sys.modules) - before), "edges": edges}))
"""


def probe() -> tuple[list[str], list[tuple[str, str]]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "bridge.rules", *MODULES],
        capture_output=True,
        text=True,
        check=True,
        cwd=RULES.parent.parent,
    )
    found = json.loads(out.stdout)
    return found["loaded"], [tuple(e) for e in found["edges"]]


def test_importing_the_rules_loads_no_io_framework_client_or_randomness() -> None:
    loaded, _ = probe()
    assert set(MODULES) <= set(loaded)
    bad = [m for m in loaded if m.split(".")[0] in BANNED]
    assert bad == []


def test_time_and_datetime_come_only_from_the_data_model_not_from_a_rule() -> None:
    _, edges = probe()  # importlib's own calls act for a statement already seen
    for clock, importers in CLOCKS.items():
        found = {i for i, name in edges if name == clock and not i.startswith("importlib.")}
        assert found <= importers, (clock, found)


def test_rule_modules_import_only_pure_modules() -> None:
    for path in RULES.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert set(names) <= ALLOWED, (path.name, names)
