"""How a session's methods read in the ID token (RFC 8176 ``amr``, the hub's ``acr``), passkeys
included, and when a service's ``acr_values`` need a second factor first."""

from __future__ import annotations

import pytest

from identity.oidc import assurance
from identity.oidc.assurance import MFA, PASSWORD


@pytest.mark.parametrize(
    ("stored", "amr", "acr"),
    [
        ("pwd", ["pwd"], PASSWORD),
        ("", ["pwd"], PASSWORD),
        ("pwd otp", ["pwd", "otp", "mfa"], MFA),
        # A passkey after the password, with and without user verification.
        ("pwd hwk user", ["pwd", "hwk", "user", "mfa"], MFA),
        ("pwd swk", ["pwd", "swk", "mfa"], MFA),
        # A passkey alone: never pwd; it is two factors only when it verified the person.
        ("hwk user", ["hwk", "user"], MFA),
        ("swk user", ["swk", "user"], MFA),
        ("hwk", ["hwk"], PASSWORD),
    ],
)
def test_amr_and_acr_of_a_session(stored: str, amr: list[str], acr: str) -> None:
    assert assurance.amr(stored) == amr
    assert assurance.acr(stored) == acr


def test_a_passkey_joins_the_sessions_methods_once() -> None:
    assert assurance.with_passkey("pwd", "hwk user") == "pwd hwk user"
    assert assurance.with_passkey("pwd otp", "swk") == "pwd otp swk"
    assert assurance.with_passkey("pwd hwk", "hwk user") == "pwd hwk user"


@pytest.mark.parametrize(
    ("acr_values", "stored", "steps_up"),
    [
        (MFA, "pwd", True),
        (MFA, "hwk", True),
        (MFA, "pwd otp", False),
        (MFA, "pwd hwk", False),
        (MFA, "swk user", False),
        (f"{MFA} {PASSWORD}", "pwd", False),
        (None, "pwd", False),
    ],
)
def test_step_up_when_two_factors_are_asked_for_and_missing(acr_values: str | None, stored: str, steps_up: bool) -> None:
    assert assurance.needs_second_factor(acr_values, stored) is steps_up
