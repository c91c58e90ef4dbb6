"""``citynode report balance`` and ``citynode report retention`` on a provisioned trio.

The seed's story is set up between the real nodes (in-process, ``relocation_support``): Stockholm
refers two people to Göteborg this year and one to Malmö last year, and receives none; Göteborg
and Malmö state their counts to Stockholm. Then the commands run at Stockholm through ``main``,
as an operator would run them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from node_fixtures import SECRET, copy_federation, deliver_outbox, federation_template, statuses
from relocation_support import end_relocation, relocation

from node.balance import BalanceAnnouncer
from node.cli import main
from node.delivery import ACCEPTED
from node.service import Node


@dataclass
class Seeded:
    """The trio after the seed's relocations, and the command line to run at Stockholm."""

    argv: list[str]
    this_year: int
    last_year: int


def _announce(node: Node) -> BalanceAnnouncer:
    return BalanceAnnouncer(
        city=node.config.city,
        db=node.db,
        outgoing=node.outgoing(lambda _peer: None),
        peers=lambda: list(node.trust().peers),
        clock=node.clock,
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return federation_template(tmp_path_factory)


@pytest.fixture
def seeded(template: Path, tmp_path: Path) -> Seeded:
    fed = copy_federation(template, tmp_path / "fed")

    async def story() -> tuple[int, int]:
        stockholm, goteborg, malmo = [await fed.open(c) for c in ("stockholm", "goteborg", "malmo")]
        try:
            this_year = stockholm.today().year
            await relocation(stockholm, goteborg, index=1)
            ended = await relocation(stockholm, goteborg, index=2)
            await end_relocation(stockholm, goteborg, ended)
            await relocation(stockholm, malmo, index=1, year=this_year - 1)
            for peer in (goteborg, malmo):
                assert await _announce(peer).announce() >= 1
                assert set(statuses(await deliver_outbox(peer, stockholm))) == {ACCEPTED}
            return this_year, this_year - 1
        finally:
            await fed.close()

    this_year, last_year = asyncio.run(story())
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET.value)
    secret.chmod(0o600)
    config = fed.configs["stockholm"].source
    return Seeded(["--config", str(config), "--secret-file", str(secret)], this_year, last_year)


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


def _city(doc: dict[str, Any], city: str) -> tuple[Any, Any, Any]:
    (found,) = [c for c in doc["cities"] if c["city"] == city]
    return found["sent"], found["received"], found["source"]


def test_report_balance_shows_stockholm_sent_three_and_received_none(
    seeded: Seeded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "balance.png"
    doc = _json(capsys, "report", "balance", *seeded.argv, "--chart", str(chart))
    assert doc["years"] == [seeded.last_year, seeded.this_year]
    assert _city(doc, "stockholm") == (3, 0, "own")
    assert _city(doc, "goteborg") == (0, 2, "statement")
    assert _city(doc, "malmo") == (0, 1, "statement")
    assert doc["disagreements"] == []
    picture = chart.read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(picture) > 20_000  # a real picture, not an empty canvas


def test_report_balance_of_one_year_as_text_and_as_an_svg_chart(
    seeded: Seeded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "balance.svg"
    capsys.readouterr()
    year = str(seeded.last_year)
    assert main(["report", "balance", *seeded.argv, "--year", year, "--chart", str(chart)]) == 0
    out = capsys.readouterr().out
    stockholm_line = next(line for line in out.splitlines() if line.strip().startswith("stockholm"))
    assert stockholm_line.split()[1:4] == ["1", "0", "own"]
    assert "Chart written to" in out
    texts = {
        element.text
        for element in ElementTree.parse(chart).iter("{http://www.w3.org/2000/svg}text")
    }
    assert f"Relocations between the cities, {year}" in texts
    assert "sent 1 more than received" in texts


def test_report_balance_refuses_a_chart_that_is_not_png_or_svg(
    seeded: Seeded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = tmp_path / "balance.pdf"
    assert main(["report", "balance", *seeded.argv, "--chart", str(chart)]) == 1
    assert "png or .svg" in capsys.readouterr().err
    assert not chart.exists()


def test_report_balance_refuses_a_year_out_of_range() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["report", "balance", "--year", "1999"])
    assert exc.value.code == 2


def test_report_retention_lists_the_ended_cases_with_their_day(
    seeded: Seeded, template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # At Stockholm (home city) nothing is ever shredded; at Göteborg the ended case waits.
    assert _json(capsys, "report", "retention", *seeded.argv)["cases"] == []
    goteborg = [a.replace("stockholm.toml", "goteborg.toml") for a in seeded.argv]
    doc = _json(capsys, "report", "retention", *goteborg)
    assert doc["shred_case_key_after_days"] == 365
    (case,) = doc["cases"]
    assert case["state"] == "closed"
    assert case["due"] is False
    closed = datetime.date.fromisoformat(case["closed_on"])
    assert case["shred_on"] == (closed + datetime.timedelta(days=365)).isoformat()
