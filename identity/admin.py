"""Operator actions shared by the CLI and tests: registering services and creating accounts.
They validate their input, take the caller's session and never commit."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from email.message import EmailMessage
from urllib.parse import urlsplit

from pydantic import ValidationError
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from identity.accounts import links
from identity.accounts.children import is_child
from identity.accounts.passwords import PasswordHasher, check_password
from identity.accounts.store import EmailTaken, create_account
from identity.db.models import AccountStatus, Delivery, Notice, Service, utcnow
from identity.deliveries import resume
from identity.oidc import redirects, scopes
from identity.oidc.client import AuthMethod
from identity.oidc.client_keys import BadKeys, check_jwks
from identity.sealing import KeyCipher, new_webhook_secret, seal_scim_token, seal_webhook_secret
from identity.settings import Settings
from identity.tokens import digest, new_client_id, new_secret
from schemas.account import BasicDetails, normalize_email, problems
from schemas.events import service_topic

DEFAULT_SERVICE_SCOPE = "openid profile email phone address marketing offline_access"
DEFAULT_GRANT_TYPES = ["authorization_code", "refresh_token", "client_credentials"]
#: A public client has no credential, so it gets no client_credentials grant.
PUBLIC_GRANT_TYPES = ["authorization_code", "refresh_token"]
APPLICATION_TYPES = ("web", "native")
#: The most of a --jwks-file that is read.
MAX_JWKS_FILE = 64 * 1024


class InvalidInput(Exception):
    """A bad argument, explained for the operator who gave it."""


@dataclass(frozen=True)
class NewAccount:
    sub: str
    #: Mail to send once the caller commits (a guardian's consent request for a child).
    mail: list[EmailMessage] = field(default_factory=list)


@dataclass(frozen=True)
class NewService:
    client_id: str
    #: Shown once; None for a service that holds no secret (``none``, ``private_key_jwt``).
    client_secret: str | None
    #: Standard Webhooks secret (``whsec_...``), shown once, when a webhook was registered.
    webhook_secret: str | None = None
    #: The service's own Kafka topic, when it subscribes to one.
    topic: str | None = None


def check_uri(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidInput(f"{what} must be an absolute http(s) URL: {value!r}")
    if parts.fragment:
        raise InvalidInput(f"{what} must not contain a fragment: {value!r}")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise InvalidInput(f"{what} must use https unless it is a loopback address: {value!r}")
    return value


async def add_service(
    db: AsyncSession,
    *,
    name: str,
    redirect_uris: list[str],
    post_logout_redirect_uris: list[str] | None = None,
    backchannel_logout_uri: str | None = None,
    scope: str = DEFAULT_SERVICE_SCOPE,
    id_token_alg: str = "RS256",
    webhook_url: str | None = None,
    kafka_topic: bool = False,
    scim_base_url: str | None = None,
    scim_token: str | None = None,
    scim_token_url: str | None = None,
    scim_client_id: str | None = None,
    cipher: KeyCipher | None = None,
    cancellation_url: str | None = None,
    cancellation_instructions: str | None = None,
    token_endpoint_auth_method: str = AuthMethod.CLIENT_SECRET_BASIC,
    application_type: str = "web",
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
    require_par: bool = False,
    require_dpop: bool = False,
    require_signed_request_object: bool = False,
) -> NewService:
    """Register a member service. A webhook secret is encrypted with ``cipher`` (the hub's
    key cipher), which is needed when ``webhook_url`` is given. A service authenticating with
    ``private_key_jwt`` gives its public keys (``jwks``) or where to fetch them (``jwks_uri``);
    ``none`` makes a public client (no secret, no client_credentials grant)."""
    if not name.strip():
        raise InvalidInput("--name must not be empty")
    if not redirect_uris:
        raise InvalidInput("give at least one --redirect-uri")
    try:
        method = AuthMethod(token_endpoint_auth_method)
    except ValueError:
        raise InvalidInput(f"--token-endpoint-auth-method must be one of: {', '.join(m.value for m in AuthMethod)}") from None
    if application_type not in APPLICATION_TYPES:
        raise InvalidInput("--application-type must be web or native")
    keys, keys_uri = _client_keys(method, jwks, jwks_uri)
    try:
        redirect_uris = [redirects.check(u, native=application_type == "native") for u in redirect_uris]
    except redirects.BadRedirectURI as exc:
        raise InvalidInput(str(exc)) from None
    post_logout = [check_uri(u, "--post-logout-redirect-uri") for u in post_logout_redirect_uris or []]
    backchannel = check_uri(backchannel_logout_uri, "--backchannel-logout-uri") if backchannel_logout_uri else None
    wanted = scopes.split(scope)
    if "openid" not in wanted or any(s not in scopes.SUPPORTED_SCOPES for s in wanted):
        raise InvalidInput(f"--scope must include openid and only these: {' '.join(scopes.SUPPORTED_SCOPES)}")
    if id_token_alg not in ("RS256", "ES256"):
        raise InvalidInput("--id-token-alg must be RS256 or ES256")
    webhook = check_uri(webhook_url, "--webhook-url") if webhook_url else None
    scim = check_scim(scim_base_url, scim_token, scim_token_url, scim_client_id)
    if scim is not None and cipher is None:
        raise ValueError("a SCIM token needs the hub's key cipher")
    cancel_url, cancel_text = check_cancellation(cancellation_url, cancellation_instructions)
    client_id = new_client_id()
    webhook_secret = new_webhook_secret() if webhook else None
    if webhook_secret is not None and cipher is None:
        raise ValueError("a webhook secret needs the hub's key cipher")
    service = NewService(
        client_id=client_id,
        client_secret=new_secret(32) if method.has_secret else None,
        webhook_secret=webhook_secret,
        topic=service_topic(client_id) if kafka_topic else None,
    )
    db.add(
        Service(
            client_id=service.client_id,
            name=name.strip(),
            secret_hash=digest(service.client_secret) if service.client_secret else None,
            secret_set_at=utcnow() if service.client_secret else None,
            webhook_secret_set_at=utcnow() if webhook_secret else None,
            redirect_uris=redirect_uris,
            post_logout_redirect_uris=post_logout,
            backchannel_logout_uri=backchannel,
            scope=scopes.join(wanted),
            grant_types=PUBLIC_GRANT_TYPES if method is AuthMethod.NONE else DEFAULT_GRANT_TYPES,
            id_token_signed_response_alg=id_token_alg,
            webhook_url=webhook,
            webhook_secret=seal_webhook_secret(cipher, webhook_secret, client_id) if cipher and webhook_secret else None,
            topic_enabled=kafka_topic,
            scim_base_url=scim.base_url if scim else None,
            scim_token=seal_scim_token(cipher, scim.token, client_id) if cipher and scim else None,
            scim_token_url=scim.token_url if scim else None,
            scim_client_id=scim.client_id if scim else None,
            cancellation_url=cancel_url,
            cancellation_instructions=cancel_text,
            token_endpoint_auth_method=method.value,
            application_type=application_type,
            jwks=keys,
            jwks_uri=keys_uri,
            require_par=require_par,
            require_dpop=require_dpop,
            require_signed_request_object=require_signed_request_object,
        )
    )
    await db.flush()
    return service


@dataclass
class UpdatedClient:
    service: Service
    #: A new client secret (shown once), when the service moved to a secret method.
    client_secret: str | None = None


async def update_service_client(
    db: AsyncSession,
    client_id: str,
    *,
    token_endpoint_auth_method: str | None = None,
    application_type: str | None = None,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
    require_par: bool | None = None,
    require_dpop: bool | None = None,
    require_signed_request_object: bool | None = None,
    remove_keys: bool = False,
) -> UpdatedClient:
    """Change how a service authenticates and what it must use (None leaves a setting as it is).
    A service moving to a secret method from another gets a new secret; one moving away from
    secrets loses its secret; a public client gets no client_credentials grant. New keys
    replace the old ones, ``remove_keys`` drops them (a private_key_jwt service always has one
    of a JWK Set or its URL); otherwise the service keeps its keys."""
    service = await db.scalar(select(Service).where(Service.client_id == client_id).with_for_update())
    if service is None:
        raise InvalidInput(f"no service with client_id {client_id!r}")
    before = AuthMethod(service.token_endpoint_auth_method)
    try:
        method = AuthMethod(token_endpoint_auth_method) if token_endpoint_auth_method is not None else before
    except ValueError:
        raise InvalidInput(f"--token-endpoint-auth-method must be one of: {', '.join(m.value for m in AuthMethod)}") from None
    kind = application_type if application_type is not None else service.application_type
    if kind not in APPLICATION_TYPES:
        raise InvalidInput("--application-type must be web or native")
    if kind != service.application_type:
        try:
            [redirects.check(u, native=kind == "native") for u in service.redirect_uris]
        except redirects.BadRedirectURI as exc:
            raise InvalidInput(f"the service's redirect URIs do not suit --application-type {kind}: {exc}") from None
    if remove_keys and (jwks is not None or jwks_uri):
        raise InvalidInput("--remove-jwks and new keys exclude each other")
    if jwks is None and not jwks_uri and not remove_keys:
        jwks, jwks_uri = service.jwks, service.jwks_uri  # keep the keys it has (if any)
    keys, keys_uri = _client_keys(method, jwks, jwks_uri)
    updated = UpdatedClient(service)
    if method.has_secret and not before.has_secret:
        updated.client_secret = new_secret(32)
        service.secret_hash = digest(updated.client_secret)
        service.secret_set_at = utcnow()
    elif not method.has_secret:
        service.secret_hash = service.secret_set_at = None
        service.previous_secret_hash = service.previous_secret_expires_at = None
    service.token_endpoint_auth_method = method.value
    if (method is AuthMethod.NONE) != (before is AuthMethod.NONE):
        service.grant_types = PUBLIC_GRANT_TYPES if method is AuthMethod.NONE else DEFAULT_GRANT_TYPES
    service.application_type = kind
    service.jwks, service.jwks_uri = keys, keys_uri
    if require_par is not None:
        service.require_par = require_par
    if require_dpop is not None:
        service.require_dpop = require_dpop
    if require_signed_request_object is not None:
        service.require_signed_request_object = require_signed_request_object
    await db.flush()
    return updated


async def refuse_taken_name(db: AsyncSession, name: str) -> None:
    """Refuse a name another service has (whatever its case): people and operators tell services
    apart by name (``onesignin services add``)."""
    taken = await db.scalar(select(Service.client_id).where(func.lower(Service.name) == name.strip().lower()).limit(1))
    if taken is not None:
        raise InvalidInput(f"a service named {name.strip()!r} is already registered ({taken}): choose another --name")


def _client_keys(method: AuthMethod, jwks: dict[str, Any] | None, jwks_uri: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """A service's public keys, at most one of a JWK Set or its URL: what its private_key_jwt
    assertions (then required) and its signed request objects (any method) are verified with."""
    if jwks is not None and jwks_uri:
        raise InvalidInput("give one of --jwks, --jwks-file or --jwks-uri")
    if method is AuthMethod.PRIVATE_KEY_JWT and jwks is None and not jwks_uri:
        raise InvalidInput("private_key_jwt needs the service's public keys: one of --jwks, --jwks-file or --jwks-uri")
    if jwks is None and not jwks_uri:
        return None, None
    if jwks_uri:
        uri = check_uri(jwks_uri, "--jwks-uri")
        if len(uri) > 2000:
            raise InvalidInput("--jwks-uri must be at most 2000 characters")
        return None, uri
    try:
        return check_jwks(jwks), None
    except BadKeys as exc:
        raise InvalidInput(f"--jwks: {exc}") from None


MAX_INSTRUCTIONS = 2000


#: The longest SCIM bearer token taken (a JWT from a token service fits).
MAX_SCIM_TOKEN = 8192


@dataclass(frozen=True)
class ScimAccess:
    """How the hub reaches a service's SCIM server: its base URL, and either a bearer ``token``
    or an OAuth client (``client_id`` and ``token`` as its secret) that gets tokens from
    ``token_url`` with the client credentials grant."""

    base_url: str
    token: str
    token_url: str | None = None
    client_id: str | None = None


def check_scim(base_url: str | None, token: str | None, token_url: str | None = None, client_id: str | None = None) -> ScimAccess | None:
    """A SCIM base URL (``https://service.example/scim/v2``) and the credential for it: a bearer
    token, or a token URL with a client id and secret (given as ``token``). None when nothing is."""
    if base_url is None and token is None and token_url is None and client_id is None:
        return None
    if not base_url or not token:
        raise InvalidInput("give --scim-base-url with --scim-token (or --scim-token-url, --scim-client-id and --scim-client-secret)")
    if len(token) > MAX_SCIM_TOKEN or any(c.isspace() or not c.isprintable() for c in token):
        raise InvalidInput(f"the SCIM token or client secret must be one printable word of at most {MAX_SCIM_TOKEN} characters")
    url = check_uri(base_url, "--scim-base-url")
    if urlsplit(url).query:
        raise InvalidInput("--scim-base-url must not have a query")
    if (token_url is None) != (client_id is None):
        raise InvalidInput("give --scim-token-url and --scim-client-id together")
    if token_url is not None:
        token_url = check_uri(token_url, "--scim-token-url")
        if not client_id or len(client_id) > 255 or any(c.isspace() or not c.isprintable() for c in client_id):
            raise InvalidInput("--scim-client-id must be one printable word of at most 255 characters")
    return ScimAccess(url.rstrip("/"), token, token_url, client_id)


def check_cancellation(url: str | None, instructions: str | None) -> tuple[str | None, str | None]:
    """How a person cancels their account at the service: an http(s) URL and/or plain text
    (each may be empty, which means none)."""
    url = check_uri(url.strip(), "--cancellation-url") if url and url.strip() else None
    if url and len(url) > 2000:
        raise InvalidInput("--cancellation-url must be at most 2000 characters")
    text = instructions.strip() if instructions else None
    if text and (len(text) > MAX_INSTRUCTIONS or "\x00" in text):
        raise InvalidInput(f"--cancellation-instructions must be at most {MAX_INSTRUCTIONS} characters of text")
    return url, text or None


async def update_service_cancellation(db: AsyncSession, client_id: str, *, url: str | None, instructions: str | None) -> Service:
    """Change how a person cancels their account at the service (None leaves a field as it is;
    an empty string clears it)."""
    service = await db.scalar(select(Service).where(Service.client_id == client_id).with_for_update())
    if service is None:
        raise InvalidInput(f"no service with client_id {client_id!r}")
    new_url, new_text = check_cancellation(url, instructions)
    if url is not None:
        service.cancellation_url = new_url
    if instructions is not None:
        service.cancellation_instructions = new_text
    await db.flush()
    return service


async def add_user(
    db: AsyncSession,
    settings: Settings,
    hasher: PasswordHasher,
    *,
    email: str,
    password: str,
    given_name: str | None = None,
    family_name: str | None = None,
    birthdate: str | None = None,
    guardian_email: str | None = None,
    verified: bool = False,
    password_hash: str | None = None,
    breached: bool = False,
) -> NewAccount:
    """Create an account; a child's guardian is asked for consent by mail (sent by the caller).
    ``password_hash``: ``password`` already hashed by the caller (off the event loop).
    ``breached``: the Pwned Passwords API, asked by the caller before the transaction, knows it."""
    body = {"email": email, "given_name": given_name, "family_name": family_name, "birthdate": birthdate}
    try:
        details = BasicDetails.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as exc:
        raise InvalidInput("; ".join(f"--{p.field.replace('_', '-')}: {p.message}" for p in problems(exc))) from None
    if reason := check_password(password, context=[details.email, given_name or "", family_name or ""], breached=breached):
        raise InvalidInput(f"--password: {reason}")
    child = is_child(details.birthdate, settings.age_of_digital_consent)
    guardian = None
    if child:
        if not guardian_email:
            raise InvalidInput(f"the person is under {settings.age_of_digital_consent}: give --guardian-email")
        try:
            guardian = normalize_email(guardian_email)
        except ValueError as exc:
            raise InvalidInput(f"--guardian-email: {exc}") from None
    try:
        account = await create_account(
            db,
            email=details.email,
            password_hash=password_hash or hasher.hash(password),
            details=details.changes(),
            channel="cli",
            status=AccountStatus.PENDING_GUARDIAN if child else AccountStatus.ACTIVE,
            guardian_email=guardian,
        )
    except EmailTaken:
        raise InvalidInput(f"an account with {details.email} already exists") from None
    account.email_verified = verified
    mail = []
    if guardian is not None:
        # Deleted after the grace period unless the guardian consents (the retention purge).
        account.delete_after = account.created_at + dt.timedelta(days=settings.child_grace_days)
        secret = await links.issue(db, account, "guardian_consent", guardian)
        # In the operator's language: the guardian never saw a page of the hub.
        mail.append(links.guardian_message(settings, guardian, account.birthdate, account.delete_after, secret, locale=settings.default_locale))
    return NewAccount(account.sub, mail)


@dataclass(frozen=True)
class ServiceSync:
    client_id: str
    webhook_url: str | None
    topic: str | None
    #: A new webhook secret, shown once, when one was made.
    webhook_secret: str | None = None
    #: The SCIM server's base URL, if any (its token is never shown).
    scim_base_url: str | None = None


async def update_service_sync(
    db: AsyncSession,
    cipher: KeyCipher,
    client_id: str,
    *,
    webhook_url: str | None = None,
    remove_webhook: bool = False,
    kafka_topic: bool | None = None,
    rotate_secret: bool = False,
    scim_base_url: str | None = None,
    scim_token: str | None = None,
    scim_token_url: str | None = None,
    scim_client_id: str | None = None,
    scim_client_secret: str | None = None,
    remove_scim: bool = False,
) -> ServiceSync:
    """Change where a service receives profile changes. A new webhook URL gets a new secret; a
    changed or re-enabled webhook starts healthy again."""
    service = await db.scalar(select(Service).where(Service.client_id == client_id).with_for_update())
    if service is None:
        raise InvalidInput(f"no service with client_id {client_id!r}")
    secret = None
    if remove_webhook:
        service.webhook_url = service.webhook_secret = service.webhook_secret_set_at = None
    elif webhook_url is not None:
        service.webhook_url = check_uri(webhook_url, "--webhook-url")
        rotate_secret = rotate_secret or not service.webhook_secret
    if rotate_secret:
        if not service.webhook_url:
            raise InvalidInput("the service has no webhook: give --webhook-url")
        secret = new_webhook_secret()
        service.webhook_secret = seal_webhook_secret(cipher, secret, service.client_id)
        service.webhook_secret_set_at = utcnow()
    if remove_webhook or webhook_url is not None or rotate_secret:
        service.webhook_disabled_at = service.webhook_quarantined_at = service.webhook_failing_since = None
        service.webhook_last_error = None
        await resume(db, [service.id])
    dropped = ["webhook"] if remove_webhook else []
    if kafka_topic is not None:
        if service.topic_enabled and not kafka_topic:
            dropped.append("topic")
        service.topic_enabled = kafka_topic
    if remove_scim:
        if service.scim_base_url:
            dropped.append("scim")
            # Its deactivations and deletions too: nothing would ever send them.
            await db.execute(delete(Notice).where(Notice.service_id == service.id, Notice.channel == "scim", Notice.state == "pending"))
        service.scim_base_url = service.scim_token = service.scim_token_url = service.scim_client_id = None
    elif any(v is not None for v in (scim_base_url, scim_token, scim_token_url, scim_client_id, scim_client_secret)):
        # What is not given is kept. A bearer token (--scim-token) replaces an OAuth client; a
        # client secret keeps or takes the token URL and client id.
        oauth = scim_token is None and (scim_client_secret is not None or scim_token_url is not None or scim_client_id is not None or service.scim_token_url is not None)
        # A kept credential must be of the same kind: a bearer token is no client secret.
        kept = "kept" if service.scim_token and (service.scim_token_url is not None) == oauth else None
        checked = check_scim(
            scim_base_url or service.scim_base_url,
            (scim_client_secret or kept) if oauth else (scim_token or kept),
            (scim_token_url or service.scim_token_url) if oauth else None,
            (scim_client_id or service.scim_client_id) if oauth else None,
        )
        assert checked is not None
        service.scim_base_url, service.scim_token_url, service.scim_client_id = checked.base_url, checked.token_url, checked.client_id
        scim_secret = scim_client_secret if oauth else scim_token
        if scim_secret is not None:
            service.scim_token = seal_scim_token(cipher, scim_secret, service.client_id)
    if remove_scim or any(v is not None for v in (scim_base_url, scim_token, scim_token_url, scim_client_id, scim_client_secret)):
        service.scim_failing_since = service.scim_quarantined_at = None
        service.scim_last_error = None
        await resume(db, [service.id], "scim")
    if dropped:
        # What was queued for a channel that is gone would wait forever: it is dropped, with what
        # was delivered through it (a channel added back later starts afresh; a resync fills it).
        await db.execute(delete(Delivery).where(Delivery.service_id == service.id, Delivery.channel.in_(dropped)))
    await db.flush()
    return ServiceSync(
        client_id=service.client_id,
        webhook_url=service.webhook_url,
        topic=service_topic(service.client_id) if service.topic_enabled else None,
        webhook_secret=secret,
        scim_base_url=service.scim_base_url,
    )
