"""Server-rendered pages for people: sign-in, registration, consent and their account."""

from __future__ import annotations

import jinja2


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
    )
    configure(env)
    return env
