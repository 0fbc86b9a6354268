"""The layout's rules, checked on the source so they hold as the code grows: a folder per layer of
the flow, and dependencies that point one way (stages know no framework and no store; only the
runtime knows Faust; only the store and the analyst's query layer know ClickHouse's client)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "streams"
LAYERS = ("contract", "stages", "runtime", "store", "analyst", "producer", "collector", "ops")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


SOURCES = {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py") if "contract/tally" not in str(p)}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def importers_of(prefix: str) -> set[str]:
    return {module for module, imports in SOURCES.items()
            if any(name == prefix or name.startswith(prefix + ".") for name in imports)}


def test_every_module_lives_in_a_layer():
    top_level = {m for m in SOURCES if m.count(".") == 1 and layer(m) not in LAYERS}
    assert top_level == {"streams.cli", "streams.config", "streams.policies"}


@pytest.mark.parametrize("forbidden", ["streams.runtime", "streams.store", "streams.analyst", "streams.ops",
                                       "streams.producer", "streams.cli", "faust", "clickhouse_connect", "chdb"])
def test_stages_are_pure(forbidden):
    assert {m for m in importers_of(forbidden) if layer(m) in ("stages", "contract")} == set()


def test_only_the_runtime_imports_faust():
    assert {layer(m) for m in importers_of("faust")} == {"runtime"}


def test_only_the_store_and_the_query_layer_import_clickhouse_connect():
    assert {m for m in importers_of("clickhouse_connect") if layer(m) != "store"} <= {"streams.analyst.query"}
    assert {m for m in importers_of("chdb") if layer(m) != "store"} == set()


def test_faust_and_aiokafka_internals_are_reached_through_one_module():
    """Private attributes of Faust's and aiokafka's objects appear in runtime/kafka_internals.py only."""
    internals = ("consumer._gap", "._read_offset", "._add_gap", "consumer._thread", "._ensure_consumer",
                 "._ensure_producer", ".send_changelog", ".acked =", "table.data", "s.data.")
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "kafka_internals.py" or "contract/tally" in str(path):
            continue
        text = path.read_text()
        used = [name for name in internals if name in text]
        if used:
            offenders[module_name(path)] = used
    assert offenders == {}


def test_the_producer_side_needs_no_worker_stack():
    """A tool's web server imports the SDK: it must not pull Faust, ClickHouse or the runtime."""
    producer_side = {m: imports for m, imports in SOURCES.items()
                     if m.startswith("streams.producer.") and m != "streams.producer.generator"}
    heavy = ("faust", "clickhouse_connect", "chdb", "aiohttp", "streams.runtime", "streams.store",
             "streams.analyst", "streams.collector")
    assert {m: sorted(i for i in imports if i.startswith(heavy)) for m, imports in producer_side.items()
            if any(i.startswith(heavy) for i in imports)} == {}


def test_the_collector_is_stateless():
    """It turns bodies into events and hands them to Kafka: no store, no Faust, no analyst."""
    forbidden = ("faust", "clickhouse_connect", "chdb", "streams.runtime", "streams.store", "streams.analyst",
                 "streams.ops")
    assert {m for m, imports in SOURCES.items() if layer(m) == "collector"
            and any(i.startswith(forbidden) for i in imports)} == set()


MODULE_LINES, CLASS_LINES = 500, 270  # "no module over about 500 lines, no class over about 250"


def test_no_room_grows_too_big_to_read():
    too_big = []
    for path in PACKAGE.rglob("*.py"):
        if "contract/tally" in str(path):  # generated
            continue
        text = path.read_text()
        if text.count("\n") > MODULE_LINES:
            too_big.append(f"{module_name(path)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > CLASS_LINES:
                too_big.append(f"{module_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_big == []
