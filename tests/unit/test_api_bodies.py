"""Every JSON body the API documents refuses what its documented schema refuses: a value of
another type is refused at its field, never converted (pydantic's lax mode would take 0 as
false or as 1970-01-01, "1" as 1). Found by walking each field of each documented body, nested
objects included, with values of every JSON type."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, ValidationError

import identity.api
from identity.api.spec import described

PROBES: list[Any] = [0, 1, 86400, 0.0, 1.0, 1.5, "1", "true", "2000-01-01", True, False, None, [], {}, ["a"], {"a": 1}]


def documented_bodies() -> list[type[BaseModel]]:
    found: set[type[BaseModel]] = set()
    for info in pkgutil.iter_modules(identity.api.__path__):
        module = importlib.import_module(f"identity.api.{info.name}")
        for _, handler in inspect.getmembers(module, inspect.iscoroutinefunction):
            operation = described(handler)
            if operation is not None and operation.body is not None:
                found.add(operation.body)
    return sorted(found, key=lambda model: model.__name__)


def fields(schema: dict[str, Any], defs: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Each property (path, schema), and the properties of each nested object."""
    for name, sub in schema.get("properties", {}).items():
        yield (*path, name), sub
        for option in [sub, *sub.get("anyOf", [])]:
            if "$ref" in option:
                yield from fields(defs[option["$ref"].rsplit("/", 1)[-1]], defs, (*path, name))


def nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    for name in reversed(path):
        value = {name: value}
    return value


def test_the_api_documents_bodies() -> None:
    names = {model.__name__ for model in documented_bodies()}
    assert {"BasicDetailsUpdate", "RightsRequestCreate", "StreamConfigurationIn", "PollRequest"} <= names


@pytest.mark.parametrize("model", documented_bodies(), ids=lambda model: model.__name__)
def test_a_value_the_documented_schema_refuses_is_refused_at_its_field(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    taken = []
    for path, sub in fields(schema, defs):
        for probe in PROBES:
            try:
                jsonschema.validate(probe, {"$defs": defs, **sub})
                continue  # the documented schema allows it
            except jsonschema.ValidationError:
                pass
            try:
                model.model_validate(nest(path, probe))
            except ValidationError as refused:
                if any(tuple(str(p) for p in error["loc"][: len(path)]) == path for error in refused.errors()):
                    continue
            taken.append((".".join(path), probe))
    assert taken == []
