"""The people who use a node: their accounts, roles and API bearer tokens.

Owns the ``users`` and ``tokens`` tables. Invariants:

* An account name matches ``^[a-z][a-z0-9._-]{0,63}$`` (``anna.berg``, ``samordnare-1``); it is a
  login, never a personnummer. Names are never reused: a revoked user keeps its row, so the audit
  trail's entries stay unambiguous. The name ``console`` is reserved for the operator's console
  (:data:`CONSOLE`, who runs the ``citynode users`` commands).
* Only a **case worker** has a unit, and it must be one of this city's units in the adopted
  agreement (the caller passes them: the store does not read the agreement); the other roles
  have none (also a CHECK constraint of the table).
* A **token** is ``cn_`` + 43 URL-safe base64 characters (256 random bits). It is shown once, by
  :meth:`UserStore.issue_token`; the database keeps only its SHA-256, looked up by that hash and
  compared in constant time. A stolen database therefore yields no usable token. Tokens expire;
  revoking a user revokes every token of theirs. Tokens are never logged.
* :meth:`UserStore.authenticate` refuses a missing, malformed, unknown, expired or revoked token
  with one :class:`~node.access.Unauthenticated` and one message, so a refusal tells a guesser
  nothing.
* With an :class:`~node.audit.AuditTrail`, every administrative change (``user_added``,
  ``token_issued``, ``user_revoked``, ``token_revoked``) is audited in the transaction that makes
  it; a refused one is audited with its error code.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import ClassVar, Final, TypeVar

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from node.access import Principal, Unauthenticated, UserRole
from node.audit import ACCOUNT_NAME, AuditTrail
from node.errors import NodeError
from node.storage.database import Database, StorageConflict
from node.storage.schema import TokenRow, UserRow

logger = logging.getLogger(__name__)

T = TypeVar("T")

TOKEN_PREFIX: Final = "cn_"  # noqa: S105  (a prefix, not a secret)
TOKEN_BYTES: Final = 32
MAX_TOKEN_TTL_S: Final = 366 * 86_400
CONSOLE: Final = Principal(user="console", role=UserRole.OPERATOR, unit=None)
_TOKEN_FORMAT: Final = re.compile(r"^cn_[A-Za-z0-9_-]{43}$")
_REFUSED: Final = "a valid, unexpired bearer token is required"
_TOKENS: Final = TokenRow.metadata.tables[TokenRow.__tablename__]
_USERS: Final = UserRow.metadata.tables[UserRow.__tablename__]
# Built once (every API request runs it): columns, no ORM objects.
_TOKEN_LOOKUP: Final = (
    select(
        _TOKENS.c.token_hash,
        _TOKENS.c.expires_at,
        _TOKENS.c.revoked_at,
        _USERS.c.name,
        _USERS.c.role,
        _USERS.c.unit,
        _USERS.c.revoked_at,
    )
    .join(_USERS, _USERS.c.name == _TOKENS.c.user_name)
    .where(_TOKENS.c.token_hash == bindparam("k_digest"))
)


class UserError(NodeError):
    """A change to users or tokens that cannot be made as asked: nothing was changed."""

    code: ClassVar[str] = "user_refused"


class InvalidUserName(UserError):
    """Not an account name (or the reserved one)."""

    code: ClassVar[str] = "invalid_user_name"


class InvalidUnit(UserError):
    """A case worker without a unit of this city, or a unit given to another role."""

    code: ClassVar[str] = "invalid_unit"


class UserExists(UserError):
    """The name is taken (names of revoked users are never reused)."""

    code: ClassVar[str] = "user_exists"


class UnknownUser(UserError):
    """No such user, or no such token of the user."""

    code: ClassVar[str] = "unknown_user"


class UserRevoked(UserError):
    """The user was revoked: no new token."""

    code: ClassVar[str] = "user_is_revoked"


class InvalidTtl(UserError):
    """A token lifetime out of range."""

    code: ClassVar[str] = "invalid_ttl"


@dataclass(frozen=True, slots=True)
class UserView:
    """A user, as operators see it.

    Attributes:
        name: the account name.
        role: the role.
        unit: a case worker's unit, else ``None``.
        created_at: when it was added.
        revoked_at: when it was revoked, or ``None``.
        active_tokens: tokens neither expired nor revoked now.
    """

    name: str
    role: UserRole
    unit: str | None
    created_at: float
    revoked_at: float | None
    active_tokens: int


@dataclass(frozen=True, slots=True)
class TokenView:
    """A token's record, without the token (it is not stored).

    Attributes:
        id: its number, to revoke it alone.
        user: whose it is.
        created_at: when it was issued.
        expires_at: when it stops working.
        revoked_at: when it was revoked, or ``None``.
    """

    id: int
    user: str
    created_at: float
    expires_at: float
    revoked_at: float | None


def token_hash(token: str) -> bytes:
    """The SHA-256 of the token's text (what the database stores)."""
    return hashlib.sha256(token.encode("ascii")).digest()


def _check_name(name: str) -> None:
    if not ACCOUNT_NAME.fullmatch(name) or name == CONSOLE.user:
        raise InvalidUserName(
            "a user name is 1-64 characters: a lowercase letter, then lowercase letters, digits, "
            f"'.', '_' or '-' (and not {CONSOLE.user!r})"
        )


def _check_unit(role: UserRole, unit: str | None, units: Collection[str]) -> None:
    if role is not UserRole.CASEWORKER:
        if unit is not None:
            raise InvalidUnit(f"only a case worker has a unit, not a {role}")
        return
    if unit is None or unit not in units:
        known = ", ".join(sorted(units)) or "none"
        raise InvalidUnit(f"a case worker needs a unit of this city in the agreement: {known}")


class UserStore:
    """Users and tokens in the node's database.

    Args:
        db: the database.
        clock: Unix seconds now.
        audit: the audit trail that records every administrative change (``None``: not audited,
            for tools and tests that only read).
    """

    def __init__(
        self, db: Database, clock: Callable[[], float], *, audit: AuditTrail | None = None
    ) -> None:
        self._db = db
        self._clock = clock
        self._audit = audit

    async def add(
        self,
        name: str,
        role: UserRole,
        unit: str | None,
        units: Collection[str] = (),
        *,
        actor: Principal | None = None,
    ) -> UserView:
        """Add a user.

        Args:
            name: the account name.
            role: the role.
            unit: the unit of a case worker (``None`` for the other roles).
            units: this city's units in the adopted agreement.
            actor: who adds it, for the audit trail.

        Returns:
            The new user.

        Raises:
            InvalidUserName, InvalidUnit, UserExists: refused (and audited).
            StorageError: the database failed.
        """

        async def work(s: AsyncSession) -> UserView:
            _check_name(name)
            _check_unit(role, unit, units)
            if await s.get(UserRow, name) is not None:
                raise UserExists("a user of that name exists or existed: choose another name")
            now = self._clock()
            s.add(UserRow(name=name, role=role.value, unit=unit, created_at=now))
            await s.flush()
            return UserView(name, role, unit, now, None, 0)

        view = await self._audited("user_added", name, actor, work)
        logger.info("user added (role %s)", role.value)
        return view

    async def issue_token(self, name: str, ttl_s: float, *, actor: Principal | None = None) -> str:
        """Issue a token for ``name``, valid ``ttl_s`` seconds from now.

        Returns:
            The token: shown once, never stored or logged.

        Raises:
            UnknownUser, UserRevoked, InvalidTtl: refused (and audited).
            StorageError: the database failed.
        """

        async def work(s: AsyncSession) -> str:
            if not 0 < ttl_s <= MAX_TOKEN_TTL_S:
                raise InvalidTtl(f"a token lives 1 s to {MAX_TOKEN_TTL_S // 86_400} days")
            await self._active_user(s, name)
            token = TOKEN_PREFIX + base64.urlsafe_b64encode(
                secrets.token_bytes(TOKEN_BYTES)
            ).decode("ascii").rstrip("=")
            now = self._clock()
            s.add(
                TokenRow(
                    user_name=name,
                    token_hash=token_hash(token),
                    created_at=now,
                    expires_at=now + ttl_s,
                )
            )
            await s.flush()
            return token

        token = await self._audited("token_issued", name, actor, work)
        logger.info("token issued (valid %d s)", int(ttl_s))
        return token

    async def revoke(self, name: str, *, actor: Principal | None = None) -> int:
        """Revoke a user and every token of theirs (a no-op for what is already revoked).

        Returns:
            The number of tokens revoked now.

        Raises:
            UnknownUser: no such user (audited).
            StorageError: the database failed.
        """

        async def work(s: AsyncSession) -> int:
            user = await s.get(UserRow, name)
            if user is None:
                raise UnknownUser("no user of that name")
            now = self._clock()
            if user.revoked_at is None:
                user.revoked_at = now
            result = await s.execute(
                update(TokenRow)
                .where(TokenRow.user_name == name, TokenRow.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return int(getattr(result, "rowcount", 0) or 0)

        count = await self._audited("user_revoked", name, actor, work)
        logger.info("user revoked with %d tokens", count)
        return count

    async def revoke_token(
        self, name: str, token_id: int, *, actor: Principal | None = None
    ) -> None:
        """Revoke one token of ``name`` (its number from :meth:`tokens`).

        Raises:
            UnknownUser: no such token of that user (audited).
            StorageError: the database failed.
        """

        async def work(s: AsyncSession) -> None:
            row = await s.get(TokenRow, token_id)
            if row is None or row.user_name != name:
                raise UnknownUser("that user has no token of that number")
            if row.revoked_at is None:
                row.revoked_at = self._clock()

        await self._audited("token_revoked", name, actor, work)

    async def authenticate(self, token: str, now: float) -> Principal:
        """Return the principal behind a bearer token.

        Args:
            token: the token as presented.
            now: Unix seconds now.

        Returns:
            The user's principal.

        Raises:
            Unauthenticated: missing, malformed, unknown, expired or revoked (one message).
            StorageError: the database failed.
        """
        if not isinstance(token, str) or not _TOKEN_FORMAT.fullmatch(token):
            raise Unauthenticated(_REFUSED)
        digest = token_hash(token)
        found = await self._db.first_row(_TOKEN_LOOKUP, {"k_digest": digest})
        if found is None:
            raise Unauthenticated(_REFUSED)
        stored_hash, expires_at, token_revoked_at, name, role, unit, user_revoked_at = found
        valid = hmac.compare_digest(bytes(stored_hash), digest)
        if not valid or token_revoked_at is not None or user_revoked_at is not None:
            raise Unauthenticated(_REFUSED)
        if not now < expires_at:
            raise Unauthenticated(_REFUSED)
        return Principal(user=name, role=UserRole(role), unit=unit)

    async def get(self, name: str) -> UserView | None:
        """The user ``name``, or ``None``."""
        return next((v for v in await self._views(name) if v.name == name), None)

    async def tokens(self, name: str) -> builtins.list[TokenView]:
        """The tokens of ``name`` (records only; the tokens themselves are not stored)."""
        query = select(TokenRow).where(TokenRow.user_name == name).order_by(TokenRow.id)
        async with self._db.reading() as s:
            rows = (await s.scalars(query)).all()
        return [
            TokenView(r.id, r.user_name, r.created_at, r.expires_at, r.revoked_at) for r in rows
        ]

    async def list(self) -> builtins.list[UserView]:
        """Every user, by name, revoked ones included."""
        return await self._views(None)

    async def _views(self, only: str | None) -> builtins.list[UserView]:
        now = self._clock()
        active = (
            select(TokenRow.user_name, func.count().label("n"))
            .where(TokenRow.revoked_at.is_(None), TokenRow.expires_at > now)
            .group_by(TokenRow.user_name)
            .subquery()
        )
        query = (
            select(UserRow, func.coalesce(active.c.n, 0))
            .outerjoin(active, active.c.user_name == UserRow.name)
            .order_by(UserRow.name)
        )
        if only is not None:
            query = query.where(UserRow.name == only)
        async with self._db.reading() as s:
            rows = (await s.execute(query)).all()
        return [
            UserView(u.name, UserRole(u.role), u.unit, u.created_at, u.revoked_at, int(n))
            for u, n in rows
        ]

    async def _active_user(self, s: AsyncSession, name: str) -> UserRow:
        user = await s.get(UserRow, name)
        if user is None:
            raise UnknownUser("no user of that name")
        if user.revoked_at is not None:
            raise UserRevoked("that user was revoked: add a new user instead")
        return user

    async def _audited(
        self,
        action: str,
        subject: str,
        actor: Principal | None,
        work: Callable[[AsyncSession], Awaitable[T]],
    ) -> T:
        """Run ``work`` in a transaction whose last statement audits it; audit a refusal too."""
        named = subject if ACCOUNT_NAME.fullmatch(subject) else None
        try:
            async with self._db.transaction() as s:
                result = await work(s)
                await self._record(s, action, named, actor, "ok")
        except StorageConflict as e:  # a concurrent add of the same name won the race
            refusal: UserError = UserExists("a user of that name exists or existed")
            await self._record(None, action, named, actor, refusal.code)
            raise refusal from e
        except UserError as e:
            await self._record(None, action, named, actor, e.code)
            raise
        return result

    async def _record(
        self,
        session: AsyncSession | None,
        action: str,
        subject: str | None,
        actor: Principal | None,
        outcome: str,
    ) -> None:
        if self._audit is not None:
            await self._audit.record(
                session,
                principal=actor,
                action=action,
                case_id=None,
                purpose=None,
                outcome=outcome,
                subject=subject,
            )
