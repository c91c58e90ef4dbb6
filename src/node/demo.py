"""``citynode demo``: three city nodes on loopback and a year of the exchange, end to end.

Owns the scenario the README promises. The federation is provisioned by the operator procedure
(``node.localnet``: ``init``, ``peers export|import|verify``, ``agreement propose|sign|adopt``,
each a real ``citynode`` process), the nodes run as ``citynode serve`` processes with mutual TLS,
and every case step is a case worker's call to a node's case API (``node.demo_api``):

1. Stockholm (Järva) inquires at Göteborg (Hisingen), anonymously; Göteborg accepts; Stockholm
   hands over the identity with a document while **Göteborg's operator rotates its encryption
   key**; Göteborg confirms the intake and reports progress.
2. Stockholm (Farsta) inquires at Malmö, which declines: Malmö never learns who it was.
3. A second Farsta inquiry is accepted by Malmö while **Malmö's operator rotates its identity
   key**, and handed over: relocation 2 of 2 for the year.
4. Göteborg (Nordost) relocates a person to Malmö, so that no node ends up holding every
   identity of the federation.
5. A third relocation from Stockholm that year is refused by the quota, with its reason.
6. The first case is closed; the balance report and its chart are written.

At the end each city's coordinator asks its own node for each case's person, with a stated
(audited) purpose: the **identity-location table** shows which node can decrypt which case, and
the demo fails if any node can decrypt them all. Invariants: the people are obviously fake
(made-up names, personnummer in the 1912 test range made valid at run time); nothing here reads
a node's database or keys; every step is checked and a failed check stops the demo with
:class:`~node.demo_api.DemoError`.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from node.demo_api import CaseApi, DemoError, Narrator, in_state, receipted
from node.localnet import LocalFederation
from protocol.personnummer import luhn_check_digit

PURPOSE: Final = "demo: which node holds which identity"
DOCUMENT_NAME: Final = "Utredning (demo).pdf"
DOCUMENT: Final = (
    b"%PDF-1.7\n% Demo document: a made-up investigation of a made-up person.\n"
    + b"Utredning enligt SoL, fiktiv, skapad av citynode demo.\n" * 200
)
# The units of the scenario, as in config/agreement.toml.
HOME_UNITS: Final = {"jarva": "stockholm", "farsta": "stockholm", "nordost": "goteborg"}
RECEIVING_UNITS: Final = {"goteborg": "hisingen", "malmo": "arbetsmarknad-social"}


def fake_personnummer(serial: int) -> str:
    """A valid-checksum personnummer of the 1912-12-12 test range (``19121212-NNNC``)."""
    nine = f"121212{serial:03d}"
    return f"1912{nine[2:6]}-{nine[6:]}{luhn_check_digit(nine)}"


# Made-up people, one per relocation that gets as far as a referral.
PEOPLE: Final = (
    {
        "name": "Vilgot Exempelsson",
        "personnummer": fake_personnummer(101),
        "phone": "070-000 00 01",
    },
    {"name": "Tindra Påhittadsdotter", "personnummer": fake_personnummer(202)},
    {"name": "Alvar Fiktivsson", "personnummer": fake_personnummer(303)},
    {"name": "Majken Kvotsson", "personnummer": fake_personnummer(404)},
)


@dataclass(frozen=True, slots=True)
class DemoCase:
    """A case of the scenario: its label, id, home and receiving city and units."""

    label: str
    id: str
    home: str
    home_unit: str
    receiving: str
    receiving_unit: str


@dataclass(frozen=True, slots=True)
class DemoOutcome:
    """What the scenario showed.

    Attributes:
        cases: the cases, by label.
        identities: case label → city → ``decrypts``, ``no identity`` or ``not a party``.
        balance: the balance report at Stockholm (``citynode report balance --json``).
        chart: the balance chart's file.
        rotations: what each key rotation took to reach the peers (seconds), by rotation.
    """

    cases: Mapping[str, DemoCase]
    identities: Mapping[str, Mapping[str, str]]
    balance: Mapping[str, Any]
    chart: Path
    rotations: Mapping[str, float]


class Scenario:
    """The demo's story, told through the case APIs of a running federation."""

    def __init__(
        self, federation: LocalFederation, api: CaseApi, narrator: Narrator, today: datetime.date
    ) -> None:
        self._fed = federation
        self._api = api
        self._say = narrator
        self._today = today
        self._cases: dict[str, DemoCase] = {}
        self._rotations: dict[str, float] = {}
        self._known: dict[tuple[str, str], dict[str, Any]] = {}

    async def run(self) -> DemoOutcome:
        """Play the whole scenario; return what it showed.

        Raises:
            DemoError: a step did not do what it should.
        """
        # What each node holds of the keys of the two cities that rotate, to see the change.
        views = [(peer, city) for city in ("goteborg", "malmo") for peer in self._peers(city)]
        known = await asyncio.gather(*(asyncio.to_thread(self._peer_view, *v) for v in views))
        self._known = dict(zip(views, known, strict=True))
        first = await self._relocation_with_encryption_rotation()
        await self._declined_inquiry()
        await self._relocation_with_identity_rotation()
        await self._relocation_between_other_cities()
        await self._quota_refusal()
        await self._close(first)
        balance, chart = await self._balance()
        identities = await self._identity_locations()
        return DemoOutcome(
            cases=dict(self._cases),
            identities=identities,
            balance=balance,
            chart=chart,
            rotations=dict(self._rotations),
        )

    # --- the story ---------------------------------------------------------------------------

    async def _relocation_with_encryption_rotation(self) -> DemoCase:
        self._say.say("\n1. Stockholm (Järva) relocates a person to Göteborg (Hisingen)")
        case = await self._inquire("case 1", "jarva", "goteborg")
        await self._reply(case, "accept")
        rotation = asyncio.create_task(self._rotate("goteborg", "encryption"))
        await asyncio.sleep(0)  # the rotation starts while the handover is under way
        await self._upload(case)
        await self._refer(case, PEOPLE[0])
        await rotation
        await self._intake(case)
        await self._report(case)
        return case

    async def _declined_inquiry(self) -> None:
        self._say.say("\n2. Stockholm (Farsta) inquires at Malmö, which declines")
        case = await self._inquire("case 2", "farsta", "malmo")
        await self._reply(case, "decline", reason="Ingen plats i den här insatsen just nu.")

    async def _relocation_with_identity_rotation(self) -> None:
        self._say.say("\n3. Stockholm (Farsta) inquires at Malmö again; Malmö accepts")
        rotation = asyncio.create_task(self._rotate("malmo", "identity"))
        case = await self._inquire("case 3", "farsta", "malmo")
        await self._reply(case, "accept")
        await self._refer(case, PEOPLE[1])
        await rotation
        await self._intake(case)

    async def _relocation_between_other_cities(self) -> None:
        self._say.say("\n4. Göteborg (Nordost) relocates a person to Malmö")
        case = await self._inquire("case 4", "nordost", "malmo")
        await self._reply(case, "accept")
        await self._refer(case, PEOPLE[2])

    async def _quota_refusal(self) -> None:
        self._say.say("\n5. A third relocation from Stockholm this year")
        case = await self._inquire("case 5", "jarva", "goteborg")
        await self._reply(case, "accept")
        answer = await self._api.call(
            case.home,
            case.home_unit,
            "POST",
            f"/cases/{case.id}/referral",
            json=_referral(PEOPLE[3]),
        )
        if (answer.status, answer.code) != (409, "quota_exceeded"):
            raise DemoError(f"the third referral was not refused by the quota ({answer.status})")
        reason = str(answer.body["error"]["message"])
        self._say.event(
            f"{case.home}/{case.home_unit}",
            "referral",
            "refused: quota_exceeded",
            target=case.receiving,
            case=case.label,
            detail=f"{reason} — the identity never left Stockholm.",
        )
        await self._close(case, reason="aborted")

    # --- steps ---------------------------------------------------------------------------------

    async def _inquire(self, label: str, unit: str, receiving: str) -> DemoCase:
        home = HOME_UNITS[unit]
        body = {
            "to_city": receiving,
            "to_unit": RECEIVING_UNITS[receiving],
            "from_unit": unit,
            "threat_level": "moderate",
            "police_consulted_on": (self._today - datetime.timedelta(days=10)).isoformat(),
            "consent": True,
            "needs": ["housing", "treatment", "employment"],
            "summary": "Behöver boende, öppenvård och stöd till arbete (demo).",
            "wished_start": (self._today + datetime.timedelta(days=21)).isoformat(),
        }
        opened = await self._api.expect(201, home, unit, "POST", "/cases", json=body)
        case = DemoCase(label, opened["id"], home, unit, receiving, RECEIVING_UNITS[receiving])
        self._cases[label] = case
        await self._delivered(case, "inquiry", "awaiting_reply", sender=home)
        warnings = ", ".join(w["code"] for w in opened.get("warnings", ()))
        self._narrate(case, home, "inquiry (anonymous: threat, consent, needs; no identity)")
        if warnings:
            self._say.say(f"{'':10}warning shown to both cities, not hidden: {warnings}")
        return case

    async def _reply(self, case: DemoCase, decision: str, reason: str = "") -> None:
        body = {"decision": decision, "reason": reason} if reason else {"decision": decision}
        path = f"/cases/{case.id}/reply"
        await self._api.expect(200, case.receiving, case.receiving_unit, "POST", path, json=body)
        state = {"accept": "accepted", "decline": "declined"}[decision]
        await self._delivered(case, "reply", state, sender=case.receiving)
        self._narrate(case, case.receiving, f"reply: {decision}", detail=reason)

    async def _upload(self, case: DemoCase) -> None:
        await self._api.expect(
            201,
            case.home,
            case.home_unit,
            "POST",
            f"/cases/{case.id}/attachments",
            data=DOCUMENT,
            headers={"Content-Type": "application/pdf"},
            params={"filename": DOCUMENT_NAME},
        )
        self._say.event(
            f"{case.home}/{case.home_unit}",
            "document attached",
            f"{len(DOCUMENT)} bytes, encrypted at rest, offered to {case.receiving} only",
            case=case.label,
        )

    async def _refer(self, case: DemoCase, person: Mapping[str, str]) -> None:
        path = f"/cases/{case.id}/referral"
        referred = await self._api.expect(
            200, case.home, case.home_unit, "POST", path, json=_referral(person)
        )
        await self._delivered(case, "referral", "referred", sender=case.home)
        quota = referred.get("quota", {}).get("text", "")
        self._narrate(
            case,
            case.home,
            "referral with the identity (sealed to the receiving node)",
            detail=f"relocation {quota}, counted by {case.home} and signed into the referral",
        )

    async def _intake(self, case: DemoCase) -> None:
        body = {"arrived_on": self._today.isoformat()}
        path = f"/cases/{case.id}/intake"
        await self._api.expect(200, case.receiving, case.receiving_unit, "POST", path, json=body)
        await self._delivered(case, "intake", "in_progress", sender=case.receiving)
        self._narrate(case, case.receiving, "intake: the person has arrived")

    async def _report(self, case: DemoCase) -> None:
        body = {"period_end": self._today.isoformat(), "text": "Boende ordnat (demo)."}
        path = f"/cases/{case.id}/reports"
        await self._api.expect(200, case.receiving, case.receiving_unit, "POST", path, json=body)
        await self._api.wait_case(
            case.receiving,
            "coordinator",
            case.id,
            receipted("progress_report"),
            "the progress report's receipt",
        )
        self._narrate(case, case.receiving, "progress report")

    async def _close(self, case: DemoCase, reason: str = "completed") -> None:
        if case.label == "case 1":
            self._say.say("\n6. The first case is closed")
        path = f"/cases/{case.id}/close"
        body = {"reason": reason}
        await self._api.expect(200, case.home, case.home_unit, "POST", path, json=body)
        await self._delivered(case, "closure", "closed", sender=case.home)
        self._narrate(case, case.home, f"closure: {reason}")

    async def _delivered(self, case: DemoCase, kind: str, state: str, *, sender: str) -> None:
        """Wait until the message is receipted at the sender and shown at the recipient."""
        recipient = case.receiving if sender == case.home else case.home
        await self._api.wait_case(
            sender, "coordinator", case.id, receipted(kind), f"the receipt of the {kind}"
        )
        await self._api.wait_case(
            recipient, "coordinator", case.id, in_state(state), f"the case {state}"
        )

    def _narrate(self, case: DemoCase, sender: str, action: str, detail: str = "") -> None:
        """One event for a message: who sent it to whom, and how long its receipt took."""
        unit = case.home_unit if sender == case.home else case.receiving_unit
        recipient = case.receiving if sender == case.home else case.home
        self._say.event(
            f"{sender}/{unit}",
            action,
            "receipted",
            target=recipient,
            case=case.label,
            detail=detail,
        )

    # --- operators ---------------------------------------------------------------------------

    async def _rotate(self, city: str, kind: str) -> None:
        """Run ``citynode keys rotate --kind KIND`` at ``city`` and wait until both peers know."""
        started = self._say.elapsed()
        done = await asyncio.to_thread(self._fed.citynode, city, "keys", "rotate", "--kind", kind)
        if kind == "encryption":
            current = [k for k in done["after"]["encryption_keys"] if k["use"] == "current"]
            outcome = f"epoch {current[0]['epoch']} is current"
        else:
            switch = datetime.datetime.fromtimestamp(done["effective_from"], datetime.UTC)
            outcome = (
                "succession statement signed by the old and the new key; "
                f"the new key signs from {switch:%H:%M:%S} UTC"
            )
        self._say.event(f"{city} operator", f"keys rotate --kind {kind}", outcome)
        waits = [
            self._learned(peer, city, kind, self._known[peer, city]) for peer in self._peers(city)
        ]
        await asyncio.gather(*waits)
        self._rotations[f"{city} {kind}"] = round(self._say.elapsed() - started, 2)

    async def _learned(self, peer: str, city: str, kind: str, before: Mapping[str, Any]) -> None:
        """Poll ``peer``'s view of ``city`` (``peers list``) until it shows the rotation."""
        deadline = asyncio.get_running_loop().time() + 30.0
        while True:
            view = await asyncio.to_thread(self._peer_view, peer, city)
            if kind == "encryption":
                changed = view["seals_to"] != before["seals_to"]
                shown = (
                    f"{peer} now seals to {city}'s epoch {(view['seals_to'] or {}).get('epoch')}"
                )
            else:
                changed = view["key_sequence"] != before["key_sequence"]
                shown = f"{peer} verified {city}'s succession statement and keeps both keys"
            if changed:
                self._say.event(f"{peer} node", "key update pushed by " + city, shown)
                return
            if asyncio.get_running_loop().time() > deadline:
                raise DemoError(f"{peer} did not learn {city}'s {kind} rotation in 30 s")
            await asyncio.sleep(0.2)

    def _peers(self, city: str) -> list[str]:
        return [other for other in self._fed.nodes if other != city]

    def _peer_view(self, city: str, peer: str) -> dict[str, Any]:
        """``citynode peers list`` at ``city``: what it holds of ``peer``'s keys."""
        listed = self._fed.citynode(city, "peers", "list")
        for view in listed["peers"]:
            if view["city"] == peer:
                return dict(view)
        raise DemoError(f"{city} has no peer {peer}")

    # --- the end -----------------------------------------------------------------------------

    async def _balance(self) -> tuple[dict[str, Any], Path]:
        chart = self._fed.root / "balance.svg"
        report = await asyncio.to_thread(
            self._fed.citynode, "stockholm", "report", "balance", "--chart", str(chart)
        )
        self._say.event("stockholm coordinator", "report balance --chart", f"chart in {chart}")
        return report, chart

    async def _identity_locations(self) -> dict[str, dict[str, str]]:
        table: dict[str, dict[str, str]] = {}
        for label, case in self._cases.items():
            row = {}
            for city in self._fed.nodes:
                answer = await self._api.case(city, "coordinator", case.id, purpose=PURPOSE)
                if answer.status == 404:
                    row[city] = "not a party"
                elif answer.status != 200:
                    raise DemoError(f"{city} answered {answer.status} {answer.code} for {label}")
                elif answer.body.get("person"):
                    row[city] = "decrypts"
                else:
                    row[city] = "no identity"
            table[label] = row
        return table


def _referral(person: Mapping[str, str]) -> dict[str, Any]:
    return {"person": dict(person), "interventions": ["Boendestöd", "Öppenvårdsbehandling"]}


def check_no_node_holds_all(identities: Mapping[str, Mapping[str, str]]) -> dict[str, int]:
    """Count the identities each node can decrypt, and insist none holds every one.

    Returns:
        City → how many of the handed-over identities it can decrypt.

    Raises:
        DemoError: a node can decrypt every identity, or there is no identity at all.
    """
    handed_over = [row for row in identities.values() if "decrypts" in row.values()]
    cities = {city for row in identities.values() for city in row}
    held = {c: sum(row.get(c) == "decrypts" for row in handed_over) for c in sorted(cities)}
    if not handed_over:
        raise DemoError("no identity was handed over")
    if any(count == len(handed_over) for count in held.values()):
        raise DemoError(f"a node can decrypt every identity: {held}")
    return held


def identity_table(cases: Mapping[str, DemoCase], identities: Mapping[str, Any]) -> str:
    """The identity-location table, as printed."""
    cities = list(next(iter(identities.values())))
    lines = [f"  {'case':<8}{'from → to':<22}" + "".join(f"{c:<14}" for c in cities)]
    for label, row in identities.items():
        case = cases[label]
        lines.append(
            f"  {label:<8}{case.home + ' → ' + case.receiving:<22}"
            + "".join(f"{row[c]:<14}" for c in cities)
        )
    return "\n".join(lines)
