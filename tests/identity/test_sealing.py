"""Secrets sealed at rest are bound to what they are for: a webhook secret to its service, a
TOTP secret to its staff account, a signing key to the key table. A sealed value copied into
another row, or another column, does not open."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from identity.sealing import KeyCipher
from identity.sealing import open_webhook_secret as open_secret
from identity.sealing import seal_webhook_secret as seal_secret
from identity.support.staff import open_totp, seal_totp

CIPHER = KeyCipher("k" * 40)


def test_a_webhook_secret_opens_only_for_its_service() -> None:
    sealed = seal_secret(CIPHER, "whsec_abc", "store")
    assert open_secret(CIPHER, sealed, "store") == "whsec_abc"
    with pytest.raises(InvalidTag):
        open_secret(CIPHER, sealed, "forum")
    with pytest.raises(InvalidTag):
        CIPHER.open(sealed)  # not as a signing key either


def test_a_totp_secret_opens_only_for_its_account() -> None:
    sealed = seal_totp(CIPHER, "JBSWY3DPEHPK3PXP", 7)
    assert open_totp(CIPHER, sealed, 7) == "JBSWY3DPEHPK3PXP"
    with pytest.raises(InvalidTag):
        open_totp(CIPHER, sealed, 8)


def test_another_hub_key_opens_nothing() -> None:
    sealed = seal_secret(CIPHER, "whsec_abc", "store")
    with pytest.raises(InvalidTag):
        open_secret(KeyCipher("z" * 40), sealed, "store")
