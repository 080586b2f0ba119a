"""Password hashing and password policy.

Hashing uses argon2id with the OWASP recommended parameters (19 MiB of
memory, two iterations, one lane). Passwords are NFKC-normalised before they
are hashed or verified, so the same password typed on different keyboards or
operating systems always matches.

The policy follows NIST SP 800-63B. A password is accepted when it:

* is at least 10 and at most 128 characters long, counted as Unicode code
  points after NFKC normalisation;
* is not, ignoring case, a commonly used password;
* is not, ignoring case, a single dictionary word;
* has not appeared in a data breach: neither as typed, nor in lower case, nor with only its
  first letter capitalised, in the offline list of about 4.2 million breached passwords
  (:mod:`identity.accounts.breached`; about 1 in 87,000 passwords in no breach is refused by
  chance), nor, when the operator enables it, in Have I Been Pwned's Pwned Passwords
  (:mod:`identity.accounts.pwned_api`, asked by the caller outside any transaction);
* is not, ignoring case, a common password or dictionary word with at most
  ``MAX_AFFIX`` digits or symbols before or after it, also when letters inside it are
  written as look-alike digits or symbols (``Summer2024!!``, ``P@ssw0rd2024``);
* is not, ignoring case, the person's email address, its local part or their
  name;
* is not one character repeated.

There are deliberately no composition rules: any mix of letters, digits,
symbols, spaces and emoji is allowed.
"""

from __future__ import annotations

import functools
import secrets
import unicodedata
from collections.abc import Iterable
from importlib import resources

import argon2
from argon2.exceptions import VerificationError
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from identity.db.models import Account, utcnow
from identity.ssf import emit, events

from identity.accounts.breached import breached_list
from identity.i18n import lazy_gettext, lazy_ngettext

__all__ = [
    "BREACHED",
    "DEFAULT_MEMORY_COST",
    "DEFAULT_PARALLELISM",
    "DEFAULT_TIME_COST",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "PasswordHasher",
    "check_password",
    "common_passwords",
    "dictionary_words",
]

DEFAULT_MEMORY_COST = 19_456
DEFAULT_TIME_COST = 2
DEFAULT_PARALLELISM = 1

MIN_LENGTH = 10
MAX_LENGTH = 128

# The policy's reasons, shown to the person choosing a password (in their language when shown).
TOO_SHORT = lazy_ngettext("Use at least %(num)d character.", "Use at least %(num)d characters.", MIN_LENGTH)
TOO_LONG = lazy_ngettext("Use at most %(num)d character.", "Use at most %(num)d characters.", MAX_LENGTH)
REPEATED_CHARACTER = lazy_gettext("A single repeated character is easy to guess; use several words instead.")
PERSONAL_DETAILS = lazy_gettext("Don't use your email address or name as your password.")
TOO_COMMON = lazy_gettext("This password is too common; choose something harder to guess.")
DICTIONARY_WORD = lazy_gettext("A single dictionary word is easy to guess; add more words.")
BREACHED = lazy_gettext(
    "This password has appeared in a data breach, so attackers try it early. Choose a different one, "
    "such as several words that mean something only to you."
)
WORD_WITH_AFFIXES = lazy_gettext("A common word with a few numbers or symbols added is easy to guess; add more words.")

#: Digits and symbols that may be added around a common word or password before the result is
#: still refused as that word.
MAX_AFFIX = 6
#: Look-alike characters read as the letters they stand for, inside a word.
_LOOK_ALIKES = (
    str.maketrans({"@": "a", "4": "a", "0": "o", "3": "e", "1": "i", "!": "i", "$": "s", "5": "s", "7": "t", "+": "t"}),
    str.maketrans({"@": "a", "4": "a", "0": "o", "3": "e", "1": "l", "!": "l", "$": "s", "5": "s", "7": "t", "+": "t"}),
)

_DATA_PACKAGE = "identity.accounts"
_COMMON_PASSWORDS_FILE = "data/common-passwords.txt"
_WORDS_FILE = "data/words.txt"


def _normalise(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


@functools.cache
def _dummy_hash(time_cost: int, memory_cost: int, parallelism: int) -> str:
    """The hash of a random password with these parameters, made once per process: verifying
    against it, when no account matches, costs what verifying a real hash does."""
    hasher = argon2.PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=argon2.Type.ID)
    return hasher.hash(secrets.token_urlsafe(32))


class PasswordHasher:
    """Hashes and verifies passwords with argon2id."""

    def __init__(
        self,
        *,
        memory_cost: int = DEFAULT_MEMORY_COST,
        time_cost: int = DEFAULT_TIME_COST,
        parallelism: int = DEFAULT_PARALLELISM,
    ) -> None:
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        self._dummy_hash = _dummy_hash(time_cost, memory_cost, parallelism)

    def hash(self, password: str) -> str:
        """Return the encoded argon2id hash of ``password``."""
        return self._hasher.hash(_normalise(password))

    def verify(self, stored_hash: str, password: str) -> bool:
        """Return whether ``password`` matches ``stored_hash``.

        A malformed hash, or one produced by an unknown algorithm, never
        matches.
        """
        try:
            return self._hasher.verify(stored_hash, _normalise(password))
        except (VerificationError, ValueError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """Return whether ``stored_hash`` should be replaced by a fresh hash.

        This is the case when it was made with other parameters or another
        algorithm than this hasher's.
        """
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except ValueError:
            return True

    def dummy_verify(self, password: str) -> None:
        """Spend as long as :meth:`verify` does, without checking anything.

        Call this when a sign-in names an unknown account, so that the
        response time does not reveal whether the account exists.
        """
        self.verify(self._dummy_hash, password)


def check_password(password: str, *, context: Iterable[str] = (), breached: bool = False) -> str | None:
    """Return why ``password`` is refused, or ``None`` when it is acceptable.

    ``context`` holds personal details that must not be used as the password,
    such as the email address and the person's name. For an email address its
    local part is refused as well. ``breached`` says that an outside source (the
    Pwned Passwords API) knows the password from a data breach.
    """
    normalised = _normalise(password)
    if len(normalised) < MIN_LENGTH:
        return TOO_SHORT
    if len(normalised) > MAX_LENGTH:
        return TOO_LONG
    if len(set(normalised)) == 1:
        return REPEATED_CHARACTER
    folded = normalised.casefold()
    if folded in _personal_details(context):
        return PERSONAL_DETAILS
    if folded in common_passwords():
        return TOO_COMMON
    if folded in dictionary_words():
        return DICTIONARY_WORD
    if breached or _in_breached_list(normalised):
        return BREACHED
    if _is_word_with_affixes(folded):
        return WORD_WITH_AFFIXES
    return None


def _in_breached_list(password: str) -> bool:
    """Whether the password, as typed or in the two usual capitalisations, was breached."""
    lower = password.lower()
    known = breached_list()
    return any(form in known for form in {password, lower, lower.capitalize()})


def _is_word_with_affixes(folded: str) -> bool:
    letters = [i for i, c in enumerate(folded) if c.isalpha()]
    if not letters:
        return False
    core = folded[letters[0] : letters[-1] + 1]
    if len(folded) - len(core) > MAX_AFFIX:
        return False
    for look_alikes in _LOOK_ALIKES:
        word = core.translate(look_alikes)
        if word.isalpha() and (word in dictionary_words() or word in common_passwords()):
            return True
    return False


def _personal_details(context: Iterable[str]) -> set[str]:
    details: set[str] = set()
    for item in context:
        folded = _normalise(item).strip().casefold()
        if not folded:
            continue
        details.add(folded)
        local_part, at, _domain = folded.rpartition("@")
        if at and local_part:
            details.add(local_part)
    return details


@functools.cache
def common_passwords() -> frozenset[str]:
    """Return the lowercase blocklist of commonly used passwords."""
    return _load_list(_COMMON_PASSWORDS_FILE)


@functools.cache
def dictionary_words() -> frozenset[str]:
    """Return the lowercase list of dictionary words and names."""
    return _load_list(_WORDS_FILE)


def _load_list(name: str) -> frozenset[str]:
    text = resources.files(_DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    return frozenset(line for line in map(str.strip, text.splitlines()) if line)


async def replace(db: AsyncSession, account_id: int, password_hash: str) -> None:
    """Store the account's new password hash (a change, or a reset through a mailed link);
    its linked services with a Shared Signals stream hear of it in the same transaction (a
    CAEP credential-change: the password updated)."""
    await db.execute(update(Account).where(Account.id == account_id).values(password_hash=password_hash))
    await emit.emit(db, account_id, events.credential_change(utcnow(), "password", "update"))
