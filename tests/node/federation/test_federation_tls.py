"""The pin table and the SSL contexts, without a network."""

from __future__ import annotations

import ssl

import pytest
from cryptography.hazmat.primitives import serialization
from federation_support import certificate

from node.federation.tls import (
    PinTable,
    client_context_for,
    pin_of_certificate_pem,
    server_context,
)
from node.tls_material import TlsMaterial


def der(material: TlsMaterial) -> bytes:
    return material.certificate.public_bytes(serialization.Encoding.DER)


def test_pin_table_names_the_city_of_each_pinned_certificate(
    goteborg: TlsMaterial, malmo: TlsMaterial
) -> None:
    table = PinTable({"goteborg": [goteborg.pin()], "malmo": [malmo.pin()]})

    assert table.city_for_certificate(der(goteborg)) == "goteborg"
    assert table.city_for_certificate(der(malmo)) == "malmo"
    assert table.city_for_pin(goteborg.pin()) == "goteborg"


def test_pin_is_of_the_public_key_so_a_reissued_certificate_keeps_it(
    goteborg: TlsMaterial,
) -> None:
    assert pin_of_certificate_pem(goteborg.certificate_pem) == goteborg.pin()


def test_city_may_hold_two_pins_while_it_rotates(goteborg: TlsMaterial) -> None:
    rotated = certificate("goteborg")
    table = PinTable.from_certificates(
        {"goteborg": [goteborg.certificate_pem, rotated.certificate_pem]}
    )

    assert table.city_for_certificate(der(rotated)) == "goteborg"
    assert table.city_for_certificate(der(goteborg)) == "goteborg"
    assert table.pins_of("goteborg") == {goteborg.pin(), rotated.pin()}
    assert table.cities == {"goteborg"}


def test_certificate_with_a_members_name_but_another_key_is_unknown(
    goteborg: TlsMaterial, outsider: TlsMaterial
) -> None:
    table = PinTable.from_certificates({"goteborg": [goteborg.certificate_pem]})

    assert outsider.certificate.subject == goteborg.certificate.subject
    assert table.city_for_certificate(der(outsider)) is None


def test_malformed_certificate_is_unknown_not_an_error(goteborg: TlsMaterial) -> None:
    table = PinTable({"goteborg": [goteborg.pin()]})

    assert table.city_for_certificate(b"\x30\x03\x02\x01\x00") is None
    assert table.city_for_certificate(b"") is None


def test_pin_listed_for_two_cities_is_refused(goteborg: TlsMaterial) -> None:
    with pytest.raises(ValueError, match="both"):
        PinTable({"goteborg": [goteborg.pin()], "malmo": [goteborg.pin()]})


@pytest.mark.parametrize("size", [0, 31, 33])
def test_pin_of_the_wrong_length_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PinTable({"goteborg": [b"\x01" * size]})


def test_pin_table_repr_names_cities_not_pins(goteborg: TlsMaterial) -> None:
    text = repr(PinTable({"goteborg": [goteborg.pin()]}))

    assert "goteborg" in text
    assert goteborg.pin().hex() not in text


def test_server_context_requires_a_client_certificate_and_tls_1_2(
    stockholm: TlsMaterial, goteborg: TlsMaterial
) -> None:
    context = server_context(stockholm, [goteborg.certificate_pem])

    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12)


def test_client_context_trusts_only_that_peers_certificate_and_ignores_names(
    stockholm: TlsMaterial, goteborg: TlsMaterial
) -> None:
    context = client_context_for(goteborg, [stockholm.certificate_pem])

    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is False
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.cert_store_stats()["x509"] == 1  # no system CAs, no other peer


def test_context_without_any_peer_certificate_is_refused(stockholm: TlsMaterial) -> None:
    with pytest.raises(ValueError, match="at least one"):
        server_context(stockholm, [])
    with pytest.raises(ValueError, match="at least one"):
        client_context_for(stockholm, [])
