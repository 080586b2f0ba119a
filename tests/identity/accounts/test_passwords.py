import unicodedata

import pytest

from identity.accounts.passwords import (
    PasswordHasher,
    check_password,
    common_passwords,
    dictionary_words,
)

TOO_SHORT = "Use at least 10 characters."
TOO_LONG = "Use at most 128 characters."
TOO_COMMON = "This password is too common; choose something harder to guess."
DICTIONARY_WORD = "A single dictionary word is easy to guess; add more words."
PERSONAL_DETAILS = "Don't use your email address or name as your password."
REPEATED_CHARACTER = "A single repeated character is easy to guess; use several words instead."
BREACHED = (
    "This password has appeared in a data breach, so attackers try it early. Choose a different one, "
    "such as several words that mean something only to you."
)
WORD_WITH_AFFIXES = "A common word with a few numbers or symbols added is easy to guess; add more words."


@pytest.fixture(scope="module")
def hasher() -> PasswordHasher:
    return PasswordHasher()


class TestPasswordHasher:
    def test_hash_uses_argon2id_with_owasp_parameters(self, hasher: PasswordHasher) -> None:
        encoded = hasher.hash("correct horse battery staple")

        assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")

    def test_hashes_are_salted(self, hasher: PasswordHasher) -> None:
        assert hasher.hash("same password") != hasher.hash("same password")

    def test_verify_accepts_the_right_password(self, hasher: PasswordHasher) -> None:
        encoded = hasher.hash("correct horse battery staple")

        assert hasher.verify(encoded, "correct horse battery staple") is True

    def test_verify_refuses_a_wrong_password(self, hasher: PasswordHasher) -> None:
        encoded = hasher.hash("correct horse battery staple")

        assert hasher.verify(encoded, "Correct horse battery staple") is False

    @pytest.mark.parametrize(
        "stored_hash",
        [
            "",
            "not a hash",
            "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
            "$argon2id$v=19$m=19456,t=2,p=1$truncated",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$ñ",
        ],
    )
    def test_verify_returns_false_for_an_invalid_hash(
        self, hasher: PasswordHasher, stored_hash: str
    ) -> None:
        assert hasher.verify(stored_hash, "correct horse battery staple") is False

    def test_verify_matches_differently_composed_unicode(self, hasher: PasswordHasher) -> None:
        composed = "café crème brûlée"
        decomposed = unicodedata.normalize("NFD", composed)
        assert composed != decomposed

        assert hasher.verify(hasher.hash(composed), decomposed) is True

    def test_verify_handles_non_ascii_passwords(self, hasher: PasswordHasher) -> None:
        encoded = hasher.hash("пароль на русском 🔐")

        assert hasher.verify(encoded, "пароль на русском 🔐") is True
        assert hasher.verify(encoded, "пароль на русском") is False

    def test_fresh_hash_needs_no_rehash(self, hasher: PasswordHasher) -> None:
        assert hasher.needs_rehash(hasher.hash("correct horse battery staple")) is False

    @pytest.mark.parametrize(
        "parameters",
        [{"memory_cost": 8192}, {"time_cost": 3}, {"parallelism": 2}],
    )
    def test_needs_rehash_after_a_parameter_change(
        self, hasher: PasswordHasher, parameters: dict[str, int]
    ) -> None:
        old_hasher = PasswordHasher(**parameters)
        encoded = old_hasher.hash("correct horse battery staple")

        assert hasher.verify(encoded, "correct horse battery staple") is True
        assert hasher.needs_rehash(encoded) is True
        assert old_hasher.needs_rehash(encoded) is False

    def test_needs_rehash_for_an_invalid_hash(self, hasher: PasswordHasher) -> None:
        assert hasher.needs_rehash("not a hash") is True

    def test_dummy_verify_costs_what_a_real_verify_costs(self) -> None:
        # The decoy hash uses the hasher's own parameters, so an unknown email
        # costs the same argon2id work as a wrong password.
        cheap = PasswordHasher(memory_cost=8192, time_cost=1)
        assert cheap._dummy_hash.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
        assert PasswordHasher()._dummy_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        cheap.dummy_verify("wrong password here")


class TestCheckPassword:
    @pytest.mark.parametrize(
        "password",
        [
            "correct horse battery staple",
            "Tr0ub4dor&3x",
            "ten chars!",
            "ĉiu ŝtono en la ĝardeno",
            "🔐🔑🗝️🚪🏠🔐🔑🗝️🚪🏠",
        ],
    )
    def test_accepts_reasonable_passwords(self, password: str) -> None:
        assert check_password(password) is None

    def test_accepts_a_64_character_passphrase(self) -> None:
        passphrase = "the quick brown fox jumps over the lazy dog while it rains a lot"
        assert len(passphrase) == 64

        assert check_password(passphrase) is None

    def test_accepts_128_characters(self) -> None:
        assert check_password("correct horse battery staple " * 4 + "x" * 12) is None

    def test_needs_no_particular_kinds_of_character(self) -> None:
        assert check_password("onlylowercaselettersandnothingelse") is None

    @pytest.mark.parametrize("password", ["", "short", "nine char"])
    def test_refuses_short_passwords(self, password: str) -> None:
        assert check_password(password) == TOO_SHORT

    def test_refuses_passwords_over_128_characters(self) -> None:
        assert check_password("correct horse battery staple " * 4 + "x" * 13) == TOO_LONG

    def test_counts_code_points_after_nfkc_normalisation(self) -> None:
        decomposed = unicodedata.normalize("NFD", "éééééééééz")
        assert len(decomposed) == 19

        assert check_password(decomposed[:-1]) == TOO_SHORT
        assert check_password(decomposed) is None

    def test_counts_compatibility_characters_after_normalisation(self) -> None:
        ligatures = "\ufb03" * 4
        assert len(ligatures) == 4

        assert check_password(ligatures) is None

    @pytest.mark.parametrize("password", ["1234567890", "qwertyuiop", "Password123", "QWERTYUIOP"])
    def test_refuses_common_passwords(self, password: str) -> None:
        assert check_password(password) == TOO_COMMON

    @pytest.mark.parametrize("password", ["international", "Understanding", "BUTTERFLIES"])
    def test_refuses_a_single_dictionary_word(self, password: str) -> None:
        assert check_password(password) == DICTIONARY_WORD

    def test_accepts_several_dictionary_words(self) -> None:
        assert check_password("international butterflies") is None

    @pytest.mark.parametrize(
        "password",
        ["ada.lovelace@example.org", "ADA.LOVELACE@EXAMPLE.ORG", "ada.lovelace", "Ada Lovelace"],
    )
    def test_refuses_personal_details(self, password: str) -> None:
        context = ["Ada.Lovelace@example.org", "Ada Lovelace"]

        assert check_password(password, context=context) == PERSONAL_DETAILS

    def test_allows_passwords_that_merely_contain_personal_details(self) -> None:
        assert check_password("ada lovelace writes programs", context=["Ada Lovelace"]) is None

    def test_ignores_empty_context(self) -> None:
        assert check_password("ten chars!", context=["", "  "]) is None

    @pytest.mark.parametrize("password", ["aaaaaaaaaaaa", "            ", "ééééééééééé"])
    def test_refuses_a_single_repeated_character(self, password: str) -> None:
        assert check_password(password) == REPEATED_CHARACTER


class TestBreachedPasswords:
    @pytest.mark.parametrize(
        "password",
        ["Password123!", "Monkey123456", "letmein12345", "qwerty123456!", "P@ssw0rd123", "Passw0rd123!", "Elizabeth1985"],
    )
    def test_refuses_passwords_known_from_breaches(self, password: str) -> None:
        assert check_password(password) == BREACHED

    @pytest.mark.parametrize("password", ["PASSWORD123!", "password123!", "pASSWORD123!"])
    def test_refuses_them_in_other_capitalisations(self, password: str) -> None:
        assert check_password(password) == BREACHED

    @pytest.mark.parametrize(
        "password", ["Summer2024!!", "Winter2023!!", "Welcome2024!", "Football2024!", "P@ssw0rd2024", "iloveyou2024", "!!Summer2024"]
    )
    def test_refuses_a_common_word_with_a_few_numbers_or_symbols(self, password: str) -> None:
        assert check_password(password) == WORD_WITH_AFFIXES

    def test_the_outside_verdict_refuses_an_otherwise_good_password(self) -> None:
        assert check_password("lantern quiver mosaic tundra") is None
        assert check_password("lantern quiver mosaic tundra", breached=True) == BREACHED

    @pytest.mark.parametrize(
        "password",
        [
            "lantern quiver mosaic tundra",
            "Velvet-Orbit-Pickle-Harbor-42",
            "my cat eats 3 lemons at dawn",
            "Summer2024!! in the hills of Kent",
            "Strawberry-2024-quokka",
        ],
    )
    def test_accepts_strong_passphrases(self, password: str) -> None:
        assert check_password(password) is None

    def test_the_list_holds_millions_of_entries_mapped_once(self) -> None:
        from identity.accounts.breached import breached_list

        known = breached_list()
        assert len(known) >= 4_000_000
        assert "Password123!" in known and "lantern quiver mosaic tundra" not in known
        assert breached_list() is known

    @pytest.mark.parametrize("data", [b"", b"not a list at all", b"OSIBRP01" + b"\0" * 10])
    def test_a_damaged_list_is_refused(self, data: bytes) -> None:
        from identity.accounts.breached import BreachedList

        with pytest.raises(ValueError):
            BreachedList(data)


class TestWordLists:
    def test_common_passwords_are_loaded(self) -> None:
        passwords = common_passwords()

        assert len(passwords) >= 10_000
        assert "password" in passwords
        assert all(entry == entry.lower() for entry in passwords)

    def test_dictionary_words_are_loaded(self) -> None:
        words = dictionary_words()

        assert len(words) >= 20_000
        assert "international" in words
        assert all(len(word) >= 4 and word == word.lower() for word in words)

    def test_lists_are_loaded_once(self) -> None:
        assert common_passwords() is common_passwords()
        assert dictionary_words() is dictionary_words()
