"""Who is asking: the principal behind an API token, its role, and what every role may do.

Owns the vocabulary shared by the user store, the case API and the audit trail. Invariants:

* Four roles (MISSION.md, "Who uses it"): a **case worker** acts on the cases of their own unit;
  a **coordinator** sees every case of the city, the quota and the balance; an **operator** runs
  the node but never reads an identity; an **auditor** reads the audit trail.
* Every decision is made by :func:`may` from one table, so a reviewer reads the whole policy here.
* A refusal is a :class:`Forbidden` (403, with a stable code) and is audited by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final

from node.errors import NodeError


class UserRole(StrEnum):
    """The roles of the people who use a node."""

    CASEWORKER = "caseworker"
    COORDINATOR = "coordinator"
    OPERATOR = "operator"
    AUDITOR = "auditor"


class Action(StrEnum):
    """What a principal asks to do."""

    OPEN_CASE = "open_case"  # send an inquiry
    ACT_ON_CASE = "act_on_case"  # reply, referral, intake, report, close, attach
    LIST_CASES = "list_cases"
    READ_CASE = "read_case"  # the case without the person's identity
    READ_IDENTITY = "read_identity"  # the person's identity (audited with a purpose)
    READ_BALANCE = "read_balance"
    READ_AUDIT = "read_audit"


# Which role may do what, and whether only on its own unit's cases ("unit") or city-wide ("city").
POLICY: Final[dict[UserRole, dict[Action, str]]] = {
    UserRole.CASEWORKER: {
        Action.OPEN_CASE: "unit",
        Action.ACT_ON_CASE: "unit",
        Action.LIST_CASES: "unit",
        Action.READ_CASE: "unit",
        Action.READ_IDENTITY: "unit",
    },
    UserRole.COORDINATOR: {
        Action.LIST_CASES: "city",
        Action.READ_CASE: "city",
        Action.READ_IDENTITY: "city",
        Action.READ_BALANCE: "city",
    },
    UserRole.OPERATOR: {Action.READ_BALANCE: "city"},
    UserRole.AUDITOR: {Action.READ_AUDIT: "city"},
}


class Forbidden(NodeError):
    """The principal may not do this (403)."""

    code: ClassVar[str] = "forbidden"


class Unauthenticated(NodeError):
    """No valid token: missing, unknown, expired or revoked (401)."""

    code: ClassVar[str] = "unauthenticated"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user of this node.

    Attributes:
        user: the user's name (an account name, not a person's identity number).
        role: the user's role.
        unit: the unit a case worker belongs to; ``None`` for the other roles.
    """

    user: str
    role: UserRole
    unit: str | None


def may(principal: Principal, action: Action, case_unit: str | None = None) -> bool:
    """Whether ``principal`` may do ``action`` (on a case of ``case_unit``, when given).

    Args:
        principal: who asks.
        action: what they ask to do.
        case_unit: the unit of this node that holds the case, for case actions.

    Returns:
        True when the policy allows it.
    """
    scope = POLICY[principal.role].get(action)
    if scope is None:
        return False
    if scope == "unit" and case_unit is not None:
        return principal.unit == case_unit
    return True


def require(principal: Principal, action: Action, case_unit: str | None = None) -> None:
    """Refuse with :class:`Forbidden` unless :func:`may` allows it."""
    if not may(principal, action, case_unit):
        raise Forbidden(f"a {principal.role} may not {action.replace('_', ' ')} here")
