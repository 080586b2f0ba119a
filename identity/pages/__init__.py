"""Server-rendered pages for people: sign-in, registration, consent and their account."""

from __future__ import annotations

import jinja2
import jinja2.bccache


class CompiledTemplates(jinja2.BytecodeCache):
    """Templates compiled once per process, in memory, for every environment configured alike
    (each application a process builds: the hub, or the many hubs a test run starts). Jinja
    checks each template's source checksum before using what is held here."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()


#: The pages' environments (the hub's and ``environment()``): one configuration, one cache.
COMPILED = CompiledTemplates()


def configure(env: jinja2.Environment) -> None:
    """What the pages' templates need beside their loader: the person's language (the i18n
    extension, Babel's formatting) and the filters naming a rights request's parts."""
    from identity import i18n
    from identity.pages import rights
    from identity.web import language

    i18n.install(env)
    env.filters.update(rights.filters())
    env.globals["here"] = language.here


def environment() -> jinja2.Environment:
    """The pages' template environment on its own (the hub gets the same through aiohttp_jinja2)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("identity.pages", "templates"),
        autoescape=jinja2.select_autoescape(default=True),
        auto_reload=False,
        bytecode_cache=COMPILED,
    )
    configure(env)
    return env
