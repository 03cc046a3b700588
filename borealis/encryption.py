"""Sealing data at rest: AES-256-GCM under a volume's data key.

Storage nodes seal redo records and page images in LMDB, and backups seal what
they upload, with the same Sealer. The associated data binds a sealed value to
where it belongs (volume, PG, LSN, page, and what it is), so a value copied to
another key fails to open just as a flipped bit does.

Sealed layout: nonce (12 random bytes) || ciphertext || tag (16 bytes).

A storage node holds the sealers of its volumes in a VolumeSealers: PLAIN for all
when encryption is off, else each volume's own data key (unwrapped through the KMS
at start, see borealis/kms.py), or the node's default key for a volume without one.
"""

from __future__ import annotations

import os
import struct
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from borealis.errors import Corruption, InvalidRequest

DATA_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
ASSOCIATED = struct.Struct(">QIQQ")

# What a sealed value is, bound into its associated data.
WHAT_RECORD = b"R"
WHAT_IMAGE = b"I"
WHAT_OBJECT = b"O"
# A storage node's key check value, sealed once per volume (storage_node/store.py).
WHAT_KEY_CHECK = b"K"

# The data_keys entry that covers every volume without an entry of its own.
ANY_VOLUME = "*"


def associated_data(volume_id: int, pg: int, lsn: int, page: int, what: bytes) -> bytes:
    return what + ASSOCIATED.pack(volume_id, pg, lsn, page)


class Sealer(Protocol):
    @property
    def encrypted(self) -> bool: ...

    @property
    def overhead_bytes(self) -> int:
        """How many bytes longer a sealed value is than its plaintext."""
        ...

    def seal(self, plaintext: bytes, associated: bytes) -> bytes: ...

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        """The plaintext, or Corruption when the value or its associated data changed."""
        ...


class PlainSealer:
    """No encryption (`borealis up --no-encryption`): values are stored as they are."""

    encrypted = False
    overhead_bytes = 0

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        return plaintext

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        return bytes(sealed)


class AesGcmSealer:
    encrypted = True
    overhead_bytes = NONCE_BYTES + TAG_BYTES

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != DATA_KEY_BYTES:
            raise ValueError(f"a data key has {DATA_KEY_BYTES} bytes, not {len(data_key)}")
        self._aead = AESGCM(data_key)

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, associated: bytes) -> bytes:
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise Corruption(f"sealed value of {len(sealed)} bytes is too short")
        sealed = bytes(sealed)
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
        except InvalidTag:
            raise Corruption("sealed value failed authentication (changed or misplaced)") from None


PLAIN = PlainSealer()


class VolumeSealers:
    """The sealer of each volume a storage node holds.

    With encryption on, a volume without a data key of its own uses the default
    one (the key `borealis up` makes for volumes created later through the storage
    API); with neither, the volume is refused rather than stored in the clear.
    """

    def __init__(self, by_volume: dict[int, Sealer], default: Sealer | None) -> None:
        self._by_volume = dict(by_volume)
        self._default = default

    @property
    def encrypted(self) -> bool:
        sealers = [*self._by_volume.values(), *([self._default] if self._default else [])]
        return any(sealer.encrypted for sealer in sealers)

    def of(self, volume_id: int) -> Sealer:
        sealer = self._by_volume.get(volume_id, self._default)
        if sealer is None:
            raise InvalidRequest(
                "this storage node has no data key for the volume (see data_keys)",
                volume=volume_id,
            )
        return sealer


PLAIN_VOLUMES = VolumeSealers({}, PLAIN)
