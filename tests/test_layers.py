"""The packages depend on each other one way. Read from the source, so a new import that breaks a
rule fails here, not in a later refactor.

1. ``sync`` (the relay, the fan-out, the deliverer) is built on ``identity``'s data layer, and
   ``identity`` never reaches into ``sync`` except where the processes are put together (its
   composition roots).
2. ``identity/web`` is the plumbing under the handlers (cookies, CSRF, browser sessions,
   middleware, response helpers), not a layer above them: no module under ``identity/web/``
   except the app factory (``identity/web/app.py``) imports a handler package. The handler
   packages are those whose modules answer requests: ``identity.pages`` (pages for people),
   ``identity.api`` (the JSON API), ``identity.oidc.actions`` (the provider's endpoints) and
   ``identity.support`` (the console sub-application, its handlers and what only they use).
   Each lists its own URLs in its ``routes`` module; the app factory adds them. The app keys and
   the errors every layer shares live below them all, in ``identity/appkeys.py`` and
   ``identity/errors.py``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Where identity's processes are assembled: they may start sync's parts.
COMPOSITION_ROOTS = {"identity/cli.py", "identity/web/app.py"}
#: The app factory: the one module under identity/web that may import the handler packages.
APP_FACTORY = "identity/web/app.py"
HANDLER_PACKAGES = ("identity.pages", "identity.api", "identity.oidc.actions", "identity.support")


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


def is_handler_module(module: str) -> bool:
    return any(module == package or module.startswith(f"{package}.") for package in HANDLER_PACKAGES)


def test_web_imports_no_handler_package_except_in_the_app_factory() -> None:
    offenders = {
        relative(path): sorted({m for m in imported_modules(path) if is_handler_module(m)})
        for path in modules_under("identity/web")
        if relative(path) != APP_FACTORY
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_app_factory_adds_every_handler_package_routes() -> None:
    imported = set(imported_modules(ROOT / APP_FACTORY))
    assert {f"{package}.routes" for package in HANDLER_PACKAGES} <= imported


def test_handlers_are_recognised_by_package_not_by_prefix() -> None:
    assert is_handler_module("identity.pages.sign_in") and is_handler_module("identity.oidc.actions")
    assert not is_handler_module("identity.pages_extra") and not is_handler_module("identity.oidc.server")


def test_the_rule_reads_imports_in_functions_too(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from sync.runtime import add_sync\n    import sync.kafka\n", encoding="utf-8")
    assert {"sync.runtime", "sync.runtime.add_sync", "sync.kafka"} <= set(imported_modules(module))
