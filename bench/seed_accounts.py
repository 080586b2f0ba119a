#!/usr/bin/env python3
"""Fill a Postgres database with --count realistic hub accounts, for the support console's search
benchmark (bench/bench_search.py).

The database named by --database is created if missing (--drop removes it instead) and
migrated to the newest schema; accounts are then added with COPY (asyncpg's
``copy_records_to_table``) in chunks of --chunk rows, each in its own transaction, until the
table holds --count. Running it again tops up or does nothing: chunk k is always the same
people (drawn from a generator seeded with --seed and k), so an interrupted run resumes where
it stopped. The table must hold only this script's accounts.

The people look like a real customer base, as the search sees it: given and family names drawn
from common ones with a long tail (Smith about 1 %, many names sharing their first letters,
double-barrelled, "van der …", "O'…", accented ones), about 30 % of family names made up of
syllables so that prefixes are many and uneven; addresses in several shapes
(ann.smith, asmith84, smith.ann, handles) at common and company domains, unique as the hub
requires; about 70 % with a phone number in E.164 form from a handful of countries, some
numbers shared by two accounts; sign-up dates over eight years. Passwords are a placeholder
that matches no password: nobody can sign in as a seeded person.

    python bench/seed_accounts.py --database postgresql://postgres@127.0.0.1:5432/osi_bench_search --count 1000000
    python bench/seed_accounts.py --database postgresql://postgres@127.0.0.1:5432/osi_bench_search --drop
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIVEN = """James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara
Richard Susan Joseph Jessica Thomas Sarah Charles Karen Christopher Nancy Daniel Lisa Matthew
Margaret Anthony Betty Mark Sandra Donald Ashley Steven Dorothy Paul Kimberly Andrew Emily Joshua
Donna Kenneth Michelle Kevin Carol Brian Amanda George Melissa Edward Deborah Ronald Stephanie
Timothy Rebecca Jason Laura Jeffrey Sharon Ryan Cynthia Jacob Kathleen Gary Amy Nicholas Shirley
Eric Angela Jonathan Helen Stephen Anna Larry Brenda Justin Pamela Scott Nicole Brandon Samantha
Benjamin Katherine Samuel Emma Frank Ruth Gregory Christine Raymond Catherine Alexander Debra
Patrick Rachel Jack Carolyn Dennis Janet Jerry Virginia Tyler Maria Aaron Heather Jose Diane Adam
Julie Henry Joyce Nathan Victoria Douglas Kelly Zachary Christina Peter Lauren Kyle Joan Walter
Evelyn Ethan Olivia Jeremy Judith Harold Megan Keith Cheryl Christian Martha Roger Andrea Noah
Frances Gerald Hannah Carl Jacqueline Terry Ann Sean Gloria Austin Jean Arthur Kathryn Lawrence
Alice Jesse Teresa Dylan Sara Bryan Janice Joe Doris Jordan Madison Billy Julia Bruce Grace
Albert Judy Willie Abigail Gabriel Marie Logan Denise Alan Beverly Juan Amber Wayne Theresa Roy
Marilyn Ralph Danielle Randy Diana Eugene Brittany Vincent Natalie Russell Sophia Elijah Rose
Louis Isabella Bobby Alexis Philip Kayla Johnny Charlotte Oliver Amelia Harry Isla Freya Mia
Zoë José Søren Łukasz Ingrid Björn François Chloé Renée Zoltán Siobhán Niamh Aoife Seán Oisín
Mohammed Fatima Aisha Omar Yusuf Priya Arjun Ananya Wei Mei Hiroshi Yuki Kenji Sakura Lars Astrid
Giulia Marco Lucía Javier Sofía Mateo Ana Pedro João Inês Anja Jürgen Dörte Katarzyna Piotr""".split()  # noqa: SIM905
DOUBLE_GIVEN = ["Mary Ann", "Anne Marie", "Jean Paul", "Mary Jane", "Lee Ann", "John Paul", "Anna Maria", "Jean Luc"]

FAMILY = """Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez
Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris
Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill
Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips Evans
Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers Gutierrez
Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson Watson Brooks
Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo Sanders Patel Myers
Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan Bell Coleman Butler Henderson
Barnes Gonzales Fisher Vasquez Simmons Romero Jordan Patterson Alexander Hamilton Graham Reynolds
Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis Tran Medina Aguilar Stevens
Murray Ford Castro Marshall Owens Harrison Fernandez McDonald Woods Washington Kennedy Wells
Vargas Henry Chen Freeman Webb Tucker Guzman Burns Crawford Olson Simpson Porter Hunter Gordon
Mendez Silva Shaw Snyder Mason Dixon Munoz Hunt Hicks Holmes Palmer Wagner Black Robertson Boyd
Rose Stone Salazar Fox Warren Mills Meyer Rice Schmidt Garza Daniels Ferguson Nichols Stephens
Soto Weaver Ryan Gardner Payne Grant Dunn Kelley Spencer Hawkins Arnold Pierce Hansen Peters
Santos Hart Bradley Knight Elliott Cunningham Duncan Armstrong Hudson Carroll Lane Riley Andrews
Ray Berry Perkins Hoffman Johnston Matthews Pena Richards Contreras Willis Carpenter Lawrence
Sandoval Smithson Smithers Smythe Müller Schäfer Größer Jäger Köhler García Peña Núñez Muñoz
Łukasiewicz Søndergaard Ørsted Åberg Öztürk Çelik Dubois Lefèvre Hélène Byrne Ó'Brien O'Brien
O'Connor O'Neill O'Sullivan McCarthy MacLeod Smith-Jones Taylor-Brown Lloyd-Webber
Wang Li Zhang Liu Yang Huang Zhao Wu Zhou Xu Sun Ma Zhu Hu Guo He Lin Luo Singh Kumar Sharma
Gupta Khan Ali Ahmed Hussain Tanaka Suzuki Takahashi Watanabe Nakamura Kowalski Nowak Wiśniewski
Rossi Russo Ferrari Esposito Bianchi Romano Colombo Bruno Ricci Marino Jansen Visser Bakker
Dekker Andersson Johansson Karlsson Nilsson Eriksson Larsson Olsen Nielsen Jensen Petersen""".split()  # noqa: SIM905
FAMILY += ["van der Berg", "van Dijk", "van den Broek", "de Vries", "de Jong", "de la Cruz", "da Silva", "von Braun", "Le Roux", "St. John"]
SYLLABLES = """ab ad al an ar as ash ba bar bel ber bo bra bri by ca car cha chel cor cra da dal
den der do dun el en er es fa fel for fra gar gil gor gra ha hal har hen hol ing ka kel ker la lan
lar lea len ley lin lo low ma mar mel mer mil mon mor na nel ner ni no nor o ol on or pa pel per
ra ral ran ren ri rid ro ros sa sal sel sen ser sha shaw sto ta tan ter ton tor tra van ve wal war
wel wick win wood worth yar""".split()  # noqa: SIM905
DOMAINS = ["gmail.com"] * 30 + ["outlook.com"] * 10 + ["hotmail.co.uk"] * 8 + ["yahoo.com"] * 8 + ["icloud.com"] * 6
DOMAINS += ["btinternet.com", "proton.me", "gmx.de", "web.de", "orange.fr", "libero.it", "aol.com", "sky.com"] * 2
DOMAINS += [f"{word}.example" for word in ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell")]
# (country code, first digits of a mobile number, digits after the country code, weight)
COUNTRIES = [("+44", "7", 10, 30), ("+1", "", 10, 25), ("+49", "15", 11, 10), ("+33", "6", 9, 10), ("+353", "8", 9, 5), ("+61", "4", 9, 5), ("+91", "9", 10, 5), ("+34", "6", 9, 5), ("+39", "3", 10, 5)]

PLACEHOLDER_HASH = "!seeded-account:no-password-matches"
COLUMNS = [
    "sub", "email", "email_verified", "password_hash", "given_name", "family_name", "name",
    "phone_number", "marketing_news", "marketing_competitions", "marketing_offers", "status",
    "version", "created_at", "updated_at",
]  # fmt: skip
EPOCH = dt.datetime(2018, 11, 26, tzinfo=dt.UTC)
SPAN = 8 * 365 * 86400


def zipf_weights(n: int, s: float = 1.0) -> list[float]:
    return [1.0 / (rank + 1) ** s for rank in range(n)]


GIVEN_WEIGHTS = zipf_weights(len(GIVEN), 0.6)
FAMILY_WEIGHTS = zipf_weights(len(FAMILY), 0.5)


def made_up_family(rng: random.Random) -> str:
    word = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3, 3, 4))))
    return word.capitalize()


def ascii_handle(text: str) -> str:
    table = str.maketrans("äöüßéèêëçñóòôøåáàíìłśżźćńúùœæ", "aousseeeecnoooaaaiilszzcnuuoa")
    return "".join(c for c in text.lower().translate(table) if c.isascii() and (c.isalnum() or c == "-"))


def email_for(rng: random.Random, given: str, family: str, taken: set[str]) -> str:
    g, f = ascii_handle(given.split()[0]), ascii_handle(family.replace(" ", ""))
    domain = rng.choice(DOMAINS)
    shape = rng.random()
    if shape < 0.35:
        local = f"{g}.{f}"
    elif shape < 0.55:
        local = f"{g[:1]}{f}{rng.randint(1, 99)}"
    elif shape < 0.65:
        local = f"{f}.{g}"
    elif shape < 0.80:
        local = f"{g}{rng.randint(1950, 2010)}"
    elif shape < 0.90:
        local = f"{g}_{f}"
    else:
        local = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(5, 12)))
    email = f"{local}@{domain}"
    n = 1
    while email in taken:  # as the hub would make them pick another: add a number
        n += 1
        email = f"{local}{n}@{domain}"
    taken.add(email)
    return email


def phone_for(rng: random.Random, recent: list[str]) -> str | None:
    if rng.random() < 0.30:
        return None
    if recent and rng.random() < 0.02:
        return rng.choice(recent)  # a household's or a shared work number
    code, lead, digits, _ = rng.choices(COUNTRIES, weights=[c[3] for c in COUNTRIES])[0]
    rest = "".join(rng.choice("0123456789") for _ in range(digits - len(lead)))
    if code == "+1":
        lead = str(rng.randint(2, 9))
        rest = rest[1:]
    number = f"{code}{lead}{rest}"
    recent.append(number)
    if len(recent) > 1000:
        del recent[:500]
    return number


def people(chunk: int, size: int, seed: int, taken: set[str]) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(f"{seed}:{chunk}")
    recent: list[str] = []
    for _ in range(size):
        given = rng.choice(DOUBLE_GIVEN) if rng.random() < 0.02 else rng.choices(GIVEN, GIVEN_WEIGHTS)[0]
        family = made_up_family(rng) if rng.random() < 0.30 else rng.choices(FAMILY, FAMILY_WEIGHTS)[0]
        created = EPOCH + dt.timedelta(seconds=rng.randrange(SPAN))
        yield (
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            email_for(rng, given, family, taken),
            rng.random() < 0.9,
            PLACEHOLDER_HASH,
            given,
            family,
            f"{given} {family}",
            phone_for(rng, recent),
            rng.random() < 0.2,
            rng.random() < 0.1,
            rng.random() < 0.15,
            "pending_guardian" if rng.random() < 0.005 else "active",
            1,
            created,
            created,
        )


def urls(database: str) -> tuple[str, str, str]:
    """(asyncpg DSN, SQLAlchemy URL, database name) for a postgresql:// or postgresql+asyncpg:// URL."""
    if not database.startswith("postgresql"):
        raise SystemExit("--database must be a Postgres URL (postgresql://user@host:port/name)")
    dsn = "postgresql://" + database.split("://", 1)[1]
    return dsn, "postgresql+asyncpg://" + database.split("://", 1)[1], dsn.rsplit("/", 1)[1].split("?")[0]


async def admin_execute(dsn: str, name: str, statement: str) -> None:
    connection = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if statement == "create" and not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
        elif statement == "drop" and exists:
            await connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def migrate(url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from identity.db.migrate import upgrade

    engine = create_async_engine(url)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def seed(args: argparse.Namespace) -> None:
    dsn, url, name = urls(args.database)
    if args.drop:
        await admin_execute(dsn, name, "drop")
        print(f"dropped {name}", file=sys.stderr)
        return
    await admin_execute(dsn, name, "create")
    await migrate(url)
    connection = await asyncpg.connect(dsn)
    try:
        have = await connection.fetchval("SELECT count(*) FROM accounts")
        if have % args.chunk and have < args.count:
            raise SystemExit(f"accounts holds {have} rows, not whole chunks of {args.chunk}: not this script's (use a scratch database)")
        taken: set[str] = {row[0] for row in await connection.fetch("SELECT email FROM accounts")} if have else set()
        started, added = time.monotonic(), 0
        for chunk in range(have // args.chunk, -(-args.count // args.chunk)):
            size = min(args.chunk, args.count - chunk * args.chunk)
            records = list(people(chunk, size, args.seed, taken))
            async with connection.transaction():
                await connection.copy_records_to_table("accounts", records=records, columns=COLUMNS)
            added += size
            rate = added / (time.monotonic() - started)
            print(f"{chunk * args.chunk + size:>10,} accounts ({rate:,.0f}/s)", file=sys.stderr, flush=True)
        if added:
            await connection.execute("VACUUM (ANALYZE) accounts")
        total = await connection.fetchval("SELECT count(*) FROM accounts")
        size = await connection.fetchval("SELECT pg_size_pretty(pg_total_relation_size('accounts'))")
        print(f"{name}: {total:,} accounts ({size} with indexes); added {added:,} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    finally:
        await connection.close()


def main() -> None:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0], epilog="\n".join(doc.splitlines()[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", required=True, help="Postgres URL of the (scratch) database to fill; created if missing")
    parser.add_argument("--count", type=int, default=1_000_000, help="accounts the table should hold (default 1,000,000)")
    parser.add_argument("--chunk", type=int, default=50_000, help="accounts per COPY and transaction (default 50,000)")
    parser.add_argument("--seed", type=int, default=5, help="seed of the generator (default 5)")
    parser.add_argument("--drop", action="store_true", help="drop the database instead")
    asyncio.run(seed(parser.parse_args()))


if __name__ == "__main__":
    main()
