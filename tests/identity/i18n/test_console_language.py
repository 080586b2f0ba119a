"""The support console speaks English or German: the language picked with the switcher or the
browser's, among those two, else English; its pages say which."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import jinja2
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from identity import i18n
from identity.appkeys import SETTINGS
from identity.settings import Settings
from identity.support import services
from identity.support.session import Agent
from identity.support.words import _
from identity.web.language import console_language


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Accept-Language": "fr, de;q=0.5"}, "de"),
        ({"Accept-Language": "fr, ar"}, "en"),
        ({"Accept-Language": "de", "Cookie": "osi_lang=en"}, "en"),
        ({"Cookie": "osi_lang=de"}, "de"),
        ({"Cookie": "osi_lang=fr"}, "en"),
    ],
)
async def test_the_console_speaks_english_or_german(tmp_path, headers, expected):
    app = web.Application()
    app[SETTINGS] = Settings(data_dir=tmp_path)
    request = make_mocked_request("GET", "/support/", headers=headers, app=app)

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text=i18n.current())

    with i18n.using("en"):
        assert (await console_language(request, page)).text == expected


def test_console_pages_say_their_language():
    env = jinja2.Environment(loader=jinja2.PackageLoader("identity.support", "templates"), autoescape=True)
    i18n.install(env, domain="console")
    for lang in i18n.CONSOLE_LANGUAGES:
        with i18n.using(lang):
            page = env.get_template("console_notice.html").render(title="T", message="M", again=True)
        assert f'<html lang="{lang}" dir="ltr">' in page


def test_the_admins_services_page_speaks_german():
    """An admin's services list in German: its headings, a webhook's state, a secret's age and
    the figures the German way."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("identity.support", "templates"), autoescape=True)
    i18n.install(env, domain="console")
    now = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
    admin = Agent(session_id=1, staff_id=1, account_id=1, sub="a", email="ada@example.com", role="admin", stage="active")
    store = SimpleNamespace(client_id="store", name="Store", disabled_at=None, topic_enabled=False)
    with i18n.using("de"):
        summary = services.Summary(store, "failing", 4000, 2, 12, services.age(now - dt.timedelta(days=3), now), None)
        page = env.get_template("services.html").render(title=_("Services"), summaries=[summary], agent=admin, csrf_token="t")
    assert '<html lang="de" dir="ltr">' in page
    assert "<h1>Dienste</h1>" in page and "Alter des Client-Geheimnisses" in page
    assert "Webhook fehlerhaft" in page and "3 Tage" in page and "kein Webhook" in page and "4.000" in page
    assert "Client secret age" not in page and "failing" not in page
