"""SCRAM-SHA-256 (RFC 5802/7677) for the PostgreSQL endpoint, on `scramp`.

Users are stored as verifiers in PostgreSQL's format
'SCRAM-SHA-256$<iterations>:<salt b64>$<StoredKey b64>:<ServerKey b64>', so the
server never stores or needs a password. An unknown user goes through the same
exchange with a mock verifier (a salt derived from the user name and a per-process
secret, as PostgreSQL does) and fails at the end, so the answer does not reveal
whether the user exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import scramp

from borealis.errors import SqlError

MECHANISM = "SCRAM-SHA-256"
ITERATIONS_DEFAULT = 4096
_SALT_BYTES = 16
# Bounds on what a client may send, far above any real SCRAM message.
_CLIENT_MESSAGE_BYTES_MAX = 4096
_MOCK_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True)
class Verifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


class AuthenticationFailed(SqlError):
    """28P01, with the same message whether the user or the password was wrong."""

    def __init__(self, user: str) -> None:
        super().__init__(f'password authentication failed for user "{user}"', "28P01")


def make_verifier(password: str, iterations: int = ITERATIONS_DEFAULT) -> str:
    """The stored form of a password, as PostgreSQL writes it in pg_authid."""
    mechanism = scramp.ScramMechanism(MECHANISM)
    salt, stored_key, server_key, count = mechanism.make_auth_info(
        password, iteration_count=iterations, salt=secrets.token_bytes(_SALT_BYTES)
    )
    return _format(Verifier(count, salt, stored_key, server_key))


def _format(verifier: Verifier) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return (
        f"{MECHANISM}${verifier.iterations}:{b64(verifier.salt)}"
        f"${b64(verifier.stored_key)}:{b64(verifier.server_key)}"
    )


def parse_verifier(text: str) -> Verifier:
    """Raises ValueError for anything that is not a SCRAM-SHA-256 verifier."""
    try:
        mechanism, iterations_salt, keys = text.split("$")
        iterations_text, salt_text = iterations_salt.split(":")
        stored_text, server_text = keys.split(":")
        verifier = Verifier(
            int(iterations_text),
            base64.b64decode(salt_text, validate=True),
            base64.b64decode(stored_text, validate=True),
            base64.b64decode(server_text, validate=True),
        )
    except (ValueError, binascii.Error) as error:
        raise ValueError(f"not a SCRAM-SHA-256 verifier: {error}") from None
    if mechanism != MECHANISM or verifier.iterations < 1 or not verifier.salt:
        raise ValueError("not a SCRAM-SHA-256 verifier")
    if len(verifier.stored_key) != 32 or len(verifier.server_key) != 32:
        raise ValueError("SCRAM-SHA-256 keys must be 32 bytes")
    return verifier


def _mock_verifier(user: str) -> Verifier:
    """A stable fake verifier for an unknown user: the same user always gets the
    same salt, so probing twice does not tell an unknown user from a known one."""
    salt = hmac.new(_MOCK_SECRET, user.encode("utf-8"), hashlib.sha256).digest()[:_SALT_BYTES]
    return Verifier(ITERATIONS_DEFAULT, salt, secrets.token_bytes(32), secrets.token_bytes(32))


class ScramExchange:
    """The server side of one SCRAM-SHA-256 exchange, sans-IO.

    `first(client_first)` -> server-first; `final(client_final)` -> server-final.
    Either raises AuthenticationFailed. The user is the startup message's: libpq
    sends an empty SCRAM user name ("n=,"), which scramp's server refuses, so the
    message handling is here and scramp only derives verifiers.
    """

    def __init__(self, user: str, verifier_text: str | None) -> None:
        self._user = user
        self._known = False
        self._verifier = _mock_verifier(user)
        if verifier_text is not None:
            try:
                self._verifier = parse_verifier(verifier_text)
                self._known = True
            except ValueError:
                # A stored verifier that does not parse authenticates nobody.
                self._known = False
        self._nonce = ""
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""

    def first(self, client_first: bytes) -> bytes:
        text = self._text(client_first)
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y") or parts[1]:
            # "p=..." asks for channel binding, which is not offered; an authzid
            # (parts[1]) is not supported either.
            raise AuthenticationFailed(self._user)
        self._gs2_header = f"{parts[0]},,"
        self._client_first_bare = parts[2]
        attributes = self._attributes(parts[2])
        client_nonce = attributes.get("r", "")
        if "n" not in attributes or not client_nonce or "m" in attributes:
            raise AuthenticationFailed(self._user)
        self._nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        salt = base64.b64encode(self._verifier.salt).decode("ascii")
        self._server_first = f"r={self._nonce},s={salt},i={self._verifier.iterations}"
        return self._server_first.encode("ascii")

    def final(self, client_final: bytes) -> bytes:
        if not self._nonce:
            raise AuthenticationFailed(self._user)
        text = self._text(client_final)
        without_proof, separator, proof_text = text.rpartition(",p=")
        attributes = self._attributes(without_proof) if separator else {}
        binding = base64.b64encode(self._gs2_header.encode("ascii")).decode("ascii")
        if attributes.get("c") != binding or attributes.get("r") != self._nonce:
            raise AuthenticationFailed(self._user)
        try:
            proof = base64.b64decode(proof_text, validate=True)
        except binascii.Error:
            raise AuthenticationFailed(self._user) from None
        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}"
        signature = _hmac(self._verifier.stored_key, auth_message.encode("utf-8"))
        if len(proof) != len(signature):
            raise AuthenticationFailed(self._user)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        stored_key = hashlib.sha256(client_key).digest()
        if not hmac.compare_digest(stored_key, self._verifier.stored_key) or not self._known:
            raise AuthenticationFailed(self._user)
        server_signature = _hmac(self._verifier.server_key, auth_message.encode("utf-8"))
        return b"v=" + base64.b64encode(server_signature)

    def _attributes(self, text: str) -> dict[str, str]:
        attributes: dict[str, str] = {}
        for part in text.split(","):
            if len(part) < 2 or part[1] != "=" or part[0] in attributes:
                raise AuthenticationFailed(self._user)
            attributes[part[0]] = part[2:]
        return attributes

    def _text(self, data: bytes) -> str:
        if len(data) > _CLIENT_MESSAGE_BYTES_MAX:
            raise AuthenticationFailed(self._user)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise AuthenticationFailed(self._user) from None


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()
