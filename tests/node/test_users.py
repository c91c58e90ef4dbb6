"""Users and tokens: roles and units, tokens shown once and stored hashed, every refusal alike.

Every database case runs on SQLite and on PostgreSQL (``CITYNODE_TEST_PG_URL``).
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from users_audit_support import (
    BACKENDS,
    FakeClock,
    Opened,
    Template,
    build_template,
    drop_template,
    fresh_database,
)

from node.access import Principal, Unauthenticated, UserRole
from node.audit import AuditTrail
from node.storage.database import StorageConflict
from node.storage.schema import TokenRow, UserRow
from node.users import (
    CONSOLE,
    MAX_TOKEN_TTL_S,
    InvalidTtl,
    InvalidUnit,
    InvalidUserName,
    UnknownUser,
    UserExists,
    UserRevoked,
    UserStore,
    token_hash,
)

UNITS = ("socialnamnden", "jarva", "farsta")  # Stockholm's units in the sample agreement
DAY = 86_400.0
TOKEN_FORMAT = re.compile(r"^cn_[A-Za-z0-9_-]{43}$")


@pytest.fixture(scope="module", params=BACKENDS)
def template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Template]:
    built = build_template(request.param, tmp_path_factory.mktemp("users-db"))
    yield built
    drop_template(built)


@pytest.fixture
async def opened(template: Template, tmp_path: Path) -> AsyncIterator[Opened]:
    async with fresh_database(template, tmp_path) as database:
        yield database


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def audit(opened: Opened, clock: FakeClock) -> AuditTrail:
    return AuditTrail(opened.db, clock)


@pytest.fixture
def users(opened: Opened, clock: FakeClock, audit: AuditTrail) -> UserStore:
    return UserStore(opened.db, clock, audit=audit)


async def caseworker_with_token(users: UserStore, ttl_s: float = 30 * DAY) -> str:
    await users.add("anna.berg", UserRole.CASEWORKER, "jarva", UNITS)
    return await users.issue_token("anna.berg", ttl_s)


# --- tokens -----------------------------------------------------------------------------------


async def test_a_token_authenticates_its_user_with_role_and_unit(
    users: UserStore, clock: FakeClock
) -> None:
    token = await caseworker_with_token(users)
    assert TOKEN_FORMAT.fullmatch(token)
    assert len(base64.urlsafe_b64decode(token[3:] + "=")) == 32
    principal = await users.authenticate(token, clock.now + 1)
    assert principal == Principal(user="anna.berg", role=UserRole.CASEWORKER, unit="jarva")


async def test_every_token_is_new(users: UserStore) -> None:
    await users.add("sara", UserRole.COORDINATOR, None)
    tokens = {await users.issue_token("sara", DAY) for _ in range(5)}
    assert len(tokens) == 5


async def test_a_token_stops_working_when_it_expires(users: UserStore, clock: FakeClock) -> None:
    token = await caseworker_with_token(users, ttl_s=DAY)
    assert (await users.authenticate(token, clock.now + DAY - 1)).user == "anna.berg"
    with pytest.raises(Unauthenticated):
        await users.authenticate(token, clock.now + DAY)


async def test_revoking_a_user_refuses_every_token_of_theirs(
    users: UserStore, clock: FakeClock
) -> None:
    first = await caseworker_with_token(users)
    second = await users.issue_token("anna.berg", DAY)
    assert await users.revoke("anna.berg") == 2
    for token in (first, second):
        with pytest.raises(Unauthenticated):
            await users.authenticate(token, clock.now)
    with pytest.raises(UserRevoked):
        await users.issue_token("anna.berg", DAY)
    assert await users.revoke("anna.berg") == 0  # again: nothing left to revoke


async def test_revoking_one_token_leaves_the_others_working(
    users: UserStore, clock: FakeClock
) -> None:
    lost = await caseworker_with_token(users)
    kept = await users.issue_token("anna.berg", DAY)
    lost_id = (await users.tokens("anna.berg"))[0].id
    await users.revoke_token("anna.berg", lost_id)
    with pytest.raises(Unauthenticated):
        await users.authenticate(lost, clock.now)
    assert (await users.authenticate(kept, clock.now)).user == "anna.berg"
    with pytest.raises(UnknownUser):
        await users.revoke_token("someone.else", lost_id)


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "cn_",
        "Bearer cn_x",
        "cn_" + "A" * 43,  # well formed, never issued
        "cn_" + "A" * 44,
        "cn_" + "!" * 43,
        "\x00" * 46,
    ],
)
async def test_unknown_and_malformed_tokens_are_refused_alike(
    users: UserStore, clock: FakeClock, presented: str
) -> None:
    token = await caseworker_with_token(users)
    with pytest.raises(Unauthenticated) as caught:
        await users.authenticate(presented, clock.now)
    with pytest.raises(Unauthenticated) as altered:  # one character changed
        await users.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B"), clock.now)
    with pytest.raises(Unauthenticated) as expired:
        await users.authenticate(token, clock.now + 31 * DAY)
    assert caught.value.code == "unauthenticated"
    assert caught.value.message == altered.value.message == expired.value.message


async def test_only_the_tokens_hash_is_stored(opened: Opened, users: UserStore) -> None:
    token = await caseworker_with_token(users)
    async with opened.db.reading() as s:
        stored = (await s.scalars(select(TokenRow))).all()
    assert [bytes(row.token_hash) for row in stored] == [token_hash(token)]
    for row in stored:
        assert token.encode() not in repr(row.__dict__).encode()
    if opened.file is not None:  # every byte of the SQLite file and its WAL
        raw = opened.raw_bytes()
        secret_part = base64.urlsafe_b64decode(token[3:] + "=")
        assert token_hash(token) in raw  # we are reading the right file
        assert token.encode() not in raw
        assert token[3:].encode() not in raw
        assert secret_part not in raw


async def test_tokens_never_reach_the_log(
    users: UserStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = await caseworker_with_token(users)
    await users.authenticate(token, clock.now)
    await users.revoke("anna.berg")
    assert caplog.records  # the store does log its changes
    assert not [r for r in caplog.records if token[3:] in r.getMessage()]


@pytest.mark.parametrize("ttl_s", [0, -1, MAX_TOKEN_TTL_S + 1])
async def test_a_token_lifetime_out_of_range_is_refused(users: UserStore, ttl_s: float) -> None:
    await users.add("sara", UserRole.COORDINATOR, None)
    with pytest.raises(InvalidTtl):
        await users.issue_token("sara", ttl_s)
    assert (await users.get("sara")) is not None
    assert await users.tokens("sara") == []


async def test_a_token_for_an_unknown_user_is_refused(users: UserStore) -> None:
    with pytest.raises(UnknownUser):
        await users.issue_token("nobody", DAY)


# --- users, roles and units -------------------------------------------------------------------


async def test_a_caseworker_without_a_unit_is_refused(users: UserStore) -> None:
    with pytest.raises(InvalidUnit) as caught:
        await users.add("anna.berg", UserRole.CASEWORKER, None, UNITS)
    assert "socialnamnden" in caught.value.message  # says which units there are
    assert await users.list() == []


async def test_a_unit_not_in_the_agreement_is_refused(users: UserStore) -> None:
    with pytest.raises(InvalidUnit):
        await users.add("anna.berg", UserRole.CASEWORKER, "nordost", UNITS)  # Göteborg's unit
    assert await users.list() == []


@pytest.mark.parametrize("role", [UserRole.COORDINATOR, UserRole.OPERATOR, UserRole.AUDITOR])
async def test_only_a_caseworker_has_a_unit(users: UserStore, role: UserRole) -> None:
    with pytest.raises(InvalidUnit):
        await users.add("sara", role, "jarva", UNITS)
    view = await users.add("sara", role, None)
    assert (view.role, view.unit) == (role, None)


@pytest.mark.parametrize(
    "name",
    ["Anna", "1anna", "anna berg", "anna@example.se", "console", "a" * 65, "", "19121212-1212"],
)
async def test_a_name_that_is_not_an_account_name_is_refused(users: UserStore, name: str) -> None:
    with pytest.raises(InvalidUserName) as caught:
        await users.add(name, UserRole.AUDITOR, None)
    assert not name or name not in caught.value.message or name == "console"


async def test_a_name_is_never_reused_even_after_revocation(users: UserStore) -> None:
    await users.add("sara", UserRole.COORDINATOR, None)
    with pytest.raises(UserExists):
        await users.add("sara", UserRole.AUDITOR, None)
    await users.revoke("sara")
    with pytest.raises(UserExists):
        await users.add("sara", UserRole.AUDITOR, None)


async def test_list_shows_roles_units_revocation_and_active_tokens(
    users: UserStore, clock: FakeClock
) -> None:
    await caseworker_with_token(users)
    await users.issue_token("anna.berg", DAY)
    await users.add("olle", UserRole.OPERATOR, None)
    await users.add("revisor", UserRole.AUDITOR, None)
    await users.revoke("revisor")
    clock.now += 2 * DAY  # the one-day token has expired
    views = {v.name: v for v in await users.list()}
    assert list(views) == ["anna.berg", "olle", "revisor"]
    assert (views["anna.berg"].unit, views["anna.berg"].active_tokens) == ("jarva", 1)
    assert views["olle"].active_tokens == 0
    assert views["revisor"].revoked_at is not None


async def test_a_user_row_cannot_break_the_unit_rule_even_by_hand(opened: Opened) -> None:
    async def insert_by_hand() -> None:
        async with opened.db.transaction() as s:
            s.add(UserRow(name="x", role="caseworker", unit=None, created_at=0.0))

    with pytest.raises(StorageConflict):  # the CHECK constraint refuses it
        await insert_by_hand()


# --- the audit of administrative changes ----------------------------------------------------


async def test_changes_and_refusals_are_audited_in_order_and_the_trail_verifies(
    users: UserStore, audit: AuditTrail
) -> None:
    token = await caseworker_with_token(users)
    with pytest.raises(InvalidUnit):
        await users.add("erik", UserRole.CASEWORKER, "nordost", UNITS, actor=CONSOLE)
    await users.revoke("anna.berg", actor=CONSOLE)
    entries = list(reversed(await audit.entries()))
    assert [(e.action, e.subject, e.outcome) for e in entries] == [
        ("user_added", "anna.berg", "ok"),
        ("token_issued", "anna.berg", "ok"),
        ("user_added", "erik", "invalid_unit"),
        ("user_revoked", "anna.berg", "ok"),
    ]
    assert (entries[-1].user, entries[-1].role) == ("console", "operator")
    assert all(token[3:] not in repr(e) for e in entries)
    assert (await audit.verify()).ok


async def test_a_refused_name_is_audited_without_the_name(
    users: UserStore, audit: AuditTrail
) -> None:
    with pytest.raises(InvalidUserName):
        await users.add("19121212-1212", UserRole.AUDITOR, None)
    (entry,) = await audit.entries()
    assert (entry.action, entry.subject, entry.outcome) == (
        "user_added",
        None,
        "invalid_user_name",
    )
