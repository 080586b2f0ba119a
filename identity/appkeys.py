"""Typed application keys: every piece of shared state the handlers reach."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from identity.accounts.hashing import HashQueue
from identity.accounts.passwords import PasswordHasher
from identity.accounts.pwned_api import RangeApi
from identity.mail import Mailer
from identity.metrics import HubMetrics
from identity.oidc.server import Provider
from identity.sealing import KeyCipher
from identity.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
DB = web.AppKey("db", async_sessionmaker[AsyncSession])
PROVIDER = web.AppKey("provider", Provider)
CIPHER = web.AppKey("cipher", KeyCipher)
SECRET = web.AppKey("secret", bytes)
MAILER = web.AppKey("mailer", Mailer)
MAIL_TASKS = web.AppKey("mail_tasks", set)
HASHER = web.AppKey("hasher", PasswordHasher)
HASHING = web.AppKey("hashing", HashQueue)
HTTP = web.AppKey("http", aiohttp.ClientSession)
#: The hub's own metrics (HTTP requests, sign-ins, tokens, the database pool).
HUB_METRICS = web.AppKey("hub_metrics", HubMetrics)
#: Set only when the operator enabled the Pwned Passwords check (ONESIGNIN_BREACHED_PASSWORD_API).
BREACH_API = web.AppKey("breach_api", RangeApi)
