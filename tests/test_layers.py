"""The packages depend on each other one way: ``sync`` (the relay, the fan-out, the deliverer) is
built on ``identity``'s data layer, and ``identity`` never reaches into ``sync`` except where the
processes are put together (its composition roots). Read from the source, so a new import that
breaks the rule fails here, not in a later refactor."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Where identity's processes are assembled: they may start sync's parts.
COMPOSITION_ROOTS = {"identity/cli.py", "identity/web/app.py"}


def imported_modules(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at any depth (functions included), as dotted names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"


def modules_under(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_identity_imports_sync_only_in_its_composition_roots() -> None:
    offenders = {
        relative(path): sorted({m for m in imported_modules(path) if m == "sync" or m.startswith("sync.")})
        for path in modules_under("identity")
        if relative(path) not in COMPOSITION_ROOTS and "/migrations/" not in relative(path)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_rule_reads_imports_in_functions_too(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from sync.runtime import add_sync\n    import sync.kafka\n", encoding="utf-8")
    assert {"sync.runtime", "sync.runtime.add_sync", "sync.kafka"} <= set(imported_modules(module))
