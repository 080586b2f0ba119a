"""Secrets kept at rest, sealed: signing keys' private JWKs, services' webhook secrets and SCIM
tokens, staff TOTP secrets. AES-256-GCM under a key derived (HKDF) from the hub's secret key; a value is sealed for
one purpose (and row), so sealed columns cannot be swapped."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class KeyCipher:
    """Encrypts secrets at rest (private JWKs, webhook secrets, TOTP secrets) with AES-GCM under a
    key derived from the hub's secret key. ``purpose`` is the associated data: a value sealed for
    one purpose (and row) cannot be opened as another, so sealed columns cannot be swapped."""

    def __init__(self, secret_key: str) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"onesignin signing keys v1")
        self._aead = AESGCM(hkdf.derive(secret_key.encode()))

    def seal(self, data: dict[str, Any], purpose: str = "jwk") -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, json.dumps(data).encode(), purpose.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, sealed: str, purpose: str = "jwk") -> dict[str, Any]:
        raw = base64.urlsafe_b64decode(sealed.encode())
        return json.loads(self._aead.decrypt(raw[:12], raw[12:], purpose.encode()))


WEBHOOK_SECRET_PREFIX = "whsec_"


def new_webhook_secret() -> str:
    """A fresh webhook secret, as Standard Webhooks spell them: ``whsec_`` and 32 random bytes
    in base64."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(os.urandom(32)).decode()


def seal_webhook_secret(cipher: KeyCipher, secret: str, client_id: str) -> str:
    """A service's webhook secret as stored: sealed for that service only."""
    return cipher.seal({"webhook_secret": secret}, purpose=f"webhook-secret:{client_id}")


def open_webhook_secret(cipher: KeyCipher, sealed: str, client_id: str) -> str:
    return str(cipher.open(sealed, purpose=f"webhook-secret:{client_id}")["webhook_secret"])


def seal_scim_token(cipher: KeyCipher, token: str, client_id: str) -> str:
    """The bearer token the hub presents to a service's SCIM server, as stored: sealed for that
    service only."""
    return cipher.seal({"scim_token": token}, purpose=f"scim-token:{client_id}")


def open_scim_token(cipher: KeyCipher, sealed: str, client_id: str) -> str:
    return str(cipher.open(sealed, purpose=f"scim-token:{client_id}")["scim_token"])
