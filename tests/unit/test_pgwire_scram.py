"""SCRAM-SHA-256: verifiers in PostgreSQL's format and the server side of the exchange."""

from __future__ import annotations

import base64

import pytest
import scramp

from borealis.pgwire.scram import AuthenticationFailed, ScramExchange, make_verifier, parse_verifier

pytestmark = pytest.mark.unit

VERIFIER = make_verifier("correct horse", iterations=4096)


def exchange(server: ScramExchange, password: str, user: str = "ignored") -> scramp.ScramClient:
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    client.set_server_first(server.first(client.get_client_first().encode()).decode())
    client.set_server_final(server.final(client.get_client_final().encode()).decode())
    return client


def test_verifier_format_is_postgres() -> None:
    mechanism, iterations_salt, keys = VERIFIER.split("$")
    assert mechanism == "SCRAM-SHA-256"
    assert iterations_salt.split(":")[0] == "4096"
    parsed = parse_verifier(VERIFIER)
    assert len(parsed.stored_key) == 32 and len(parsed.server_key) == 32
    assert base64.b64encode(parsed.stored_key).decode() == keys.split(":")[0]
    assert make_verifier("correct horse") != VERIFIER  # a fresh salt each time
    with pytest.raises(ValueError):
        parse_verifier("md5abcdef")


def test_right_password_authenticates_and_server_proves_itself() -> None:
    # scramp's client checks the server signature in set_server_final.
    exchange(ScramExchange("bob", VERIFIER), "correct horse")


def test_wrong_password_and_unknown_user_fail_alike() -> None:
    with pytest.raises(AuthenticationFailed) as wrong:
        exchange(ScramExchange("bob", VERIFIER), "battery staple")
    with pytest.raises(AuthenticationFailed) as unknown:
        exchange(ScramExchange("eve", None), "correct horse")
    assert wrong.value.sqlstate == unknown.value.sqlstate == "28P01"
    assert str(wrong.value) == 'password authentication failed for user "bob"'
    assert str(unknown.value) == 'password authentication failed for user "eve"'


def test_unknown_user_gets_a_stable_mock_salt() -> None:
    first = ScramExchange("eve", None).first(b"n,,n=,r=abc").split(b",")[1]
    again = ScramExchange("eve", None).first(b"n,,n=,r=xyz").split(b",")[1]
    assert first == again


def test_libpq_empty_user_name_is_accepted() -> None:
    server = ScramExchange("bob", VERIFIER)
    reply = server.first(b"n,,n=,r=clientnonce").decode()
    assert reply.startswith("r=clientnonce") and ",i=4096" in reply


@pytest.mark.parametrize(
    "client_first",
    [
        b"p=tls-server-end-point,,n=,r=x",
        b"n,a=admin,n=,r=x",
        b"n,,r=x",
        b"garbage",
        b"\xff\xfe",
        b"n" * 5000,
    ],
)
def test_malformed_client_first(client_first: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        ScramExchange("bob", VERIFIER).first(client_first)


def test_tampered_client_final() -> None:
    server = ScramExchange("bob", VERIFIER)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "bob", "correct horse")
    client.set_server_first(server.first(client.get_client_first().encode()).decode())
    final = client.get_client_final()
    with pytest.raises(AuthenticationFailed):
        server.final(final.replace("r=", "r=X").encode())
    with pytest.raises(AuthenticationFailed):
        ScramExchange("bob", VERIFIER).final(final.encode())  # before first
