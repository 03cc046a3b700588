"""Key management: data keys wrapped under a KMS key (envelope encryption).

Each volume has a random 32-byte data key. Only its wrapped form (encrypted under
the KMS key) is ever written down, in cluster.json and the storage nodes' config
files; a node unwraps it through the KMS when it starts and keeps the plaintext
key in memory only.

KMS URLs:

    local:///abs/path/master.key
        A local KMS: AES-256-GCM key wrap under a 32-byte master key kept base64 in
        that file (mode 0600; `borealis up` creates it under the data directory).
    aws-kms://KEY_ID?endpoint=http://127.0.0.1:4566&region=us-east-1
        AWS KMS or a compatible service (GenerateDataKey with KeySpec AES_256,
        Decrypt) through boto3. KEY_ID is a key id, alias or ARN; endpoint and
        region are optional; credentials come from the environment as boto3 reads
        them (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...).

Wrapped data keys travel as text: `VOLUME:BASE64,VOLUME:BASE64`, where VOLUME is a
volume id or `*` (the default key of volumes without their own).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote

from borealis.encryption import (
    ANY_VOLUME,
    DATA_KEY_BYTES,
    PLAIN_VOLUMES,
    AesGcmSealer,
    Sealer,
    VolumeSealers,
)
from borealis.errors import Corruption, InvalidRequest, KeyUnavailable

LOCAL_SCHEME = "local://"
AWS_SCHEME = "aws-kms://"
# Bound into every locally wrapped key, so a wrapped key cannot pass for anything else.
LOCAL_WRAP_ASSOCIATED = b"borealis data key v1"
# Every call to a remote KMS has a deadline; botocore retries a failed call once.
AWS_TIMEOUT_S = 10.0
AWS_ATTEMPTS_MAX = 2


class Kms(Protocol):
    @property
    def url(self) -> str: ...

    def generate_data_key(self) -> tuple[bytes, bytes]:
        """(plaintext 32-byte data key, the same key wrapped under the KMS key)."""
        ...

    def decrypt(self, wrapped: bytes) -> bytes:
        """The plaintext data key, or KeyUnavailable."""
        ...


def create_master_key_file(path: Path) -> None:
    """Writes a new random master key, readable by its owner only (mode 0600). An
    existing file is an error: overwriting a master key loses every key under it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidRequest("the master key file exists already", path=str(path)) from None
    with os.fdopen(descriptor, "w") as file:
        file.write(base64.b64encode(os.urandom(DATA_KEY_BYTES)).decode() + "\n")
        file.flush()
        os.fsync(file.fileno())


def read_master_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as error:
        raise KeyUnavailable(
            f"cannot read the master key file: {error.strerror}", path=str(path)
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyUnavailable(
            "the master key file is open to other users; chmod 600 it", path=str(path)
        )
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyUnavailable("the master key file does not hold base64", path=str(path)) from None
    if len(key) != DATA_KEY_BYTES:
        raise KeyUnavailable(
            f"the master key file holds {len(key)} bytes, not {DATA_KEY_BYTES}", path=str(path)
        )
    return key


class LocalKms:
    """Wraps data keys under a master key kept in a local file."""

    def __init__(self, master_key_file: Path) -> None:
        self.path = Path(master_key_file)
        self._wrapper = AesGcmSealer(read_master_key_file(self.path))

    @property
    def url(self) -> str:
        return LOCAL_SCHEME + str(self.path)

    def generate_data_key(self) -> tuple[bytes, bytes]:
        data_key = os.urandom(DATA_KEY_BYTES)
        return data_key, self._wrapper.seal(data_key, LOCAL_WRAP_ASSOCIATED)

    def decrypt(self, wrapped: bytes) -> bytes:
        try:
            data_key = self._wrapper.open(wrapped, LOCAL_WRAP_ASSOCIATED)
        except Corruption:
            raise KeyUnavailable(
                "the data key does not open under the master key: a wrong or replaced "
                "master key file, or a key wrapped by another cluster",
                path=str(self.path),
            ) from None
        return checked_data_key(data_key, self.url)


class AwsKms:
    """AWS KMS (or a compatible endpoint, such as moto's server) through boto3."""

    def __init__(
        self, key_id: str, endpoint_url: str | None = None, region: str | None = None
    ) -> None:
        self.key_id = key_id
        self.endpoint_url = endpoint_url
        self.region = region
        # Made on first use: boto3 takes seconds to load, and only a call needs it.
        self._client: Any = None

    def _kms_client(self) -> Any:
        if self._client is not None:
            return self._client
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        config = Config(
            connect_timeout=AWS_TIMEOUT_S,
            read_timeout=AWS_TIMEOUT_S,
            retries={"max_attempts": AWS_ATTEMPTS_MAX, "mode": "standard"},
        )
        try:
            self._client = boto3.client(
                "kms", endpoint_url=self.endpoint_url, region_name=self.region, config=config
            )
        except ValueError as error:
            raise KeyUnavailable(f"bad AWS KMS endpoint: {error}", kms=self.url) from None
        except BotoCoreError as error:
            # No region in the URL or the environment, typically.
            raise KeyUnavailable(f"cannot set up the AWS KMS client: {error}") from None
        return self._client

    @property
    def url(self) -> str:
        settings = {"endpoint": self.endpoint_url, "region": self.region}
        query = "&".join(f"{name}={value}" for name, value in settings.items() if value)
        return AWS_SCHEME + self.key_id + ("?" + query if query else "")

    def generate_data_key(self) -> tuple[bytes, bytes]:
        client = self._kms_client()
        with self._translated("GenerateDataKey"):
            response = client.generate_data_key(KeyId=self.key_id, KeySpec="AES_256")
        return checked_data_key(response["Plaintext"], self.url), response["CiphertextBlob"]

    def decrypt(self, wrapped: bytes) -> bytes:
        client = self._kms_client()
        with self._translated("Decrypt"):
            response = client.decrypt(KeyId=self.key_id, CiphertextBlob=wrapped)
        return checked_data_key(response["Plaintext"], self.url)

    @contextlib.contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        """Turns a failed call (refused, unreachable, timed out) into KeyUnavailable."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as error:
            raise KeyUnavailable(
                f"KMS {operation} failed: {error}", kms=self.url, key=self.key_id
            ) from None


def checked_data_key(data_key: bytes, kms_url: str) -> bytes:
    if len(data_key) != DATA_KEY_BYTES:
        raise KeyUnavailable(
            f"the KMS gave a data key of {len(data_key)} bytes, not {DATA_KEY_BYTES}", kms=kms_url
        )
    return bytes(data_key)


def kms_from_url(url: str) -> Kms:
    """The KMS a URL names (see the module's docstring); InvalidRequest if malformed."""
    if url.startswith(LOCAL_SCHEME):
        path = unquote(url[len(LOCAL_SCHEME) :])
        if not path.startswith("/"):
            raise InvalidRequest(
                "a local KMS URL names an absolute path: local:///path/master.key", url=url
            )
        return LocalKms(Path(path))
    if url.startswith(AWS_SCHEME):
        # Not urlsplit: a key ARN has colons and slashes of its own.
        key_id, _, query_text = url[len(AWS_SCHEME) :].partition("?")
        query = {name: values[-1] for name, values in parse_qs(query_text).items()}
        unknown = sorted(set(query) - {"endpoint", "region"})
        if not key_id or unknown:
            raise InvalidRequest(
                "an AWS KMS URL is aws-kms://KEY_ID[?endpoint=URL&region=REGION]", url=url
            )
        return AwsKms(unquote(key_id), query.get("endpoint"), query.get("region"))
    raise InvalidRequest("unknown KMS URL: use local:///PATH or aws-kms://KEY_ID", url=url)


def format_data_keys(wrapped_by_volume: dict[str, bytes]) -> str:
    return ",".join(
        f"{volume}:{base64.b64encode(wrapped).decode()}"
        for volume, wrapped in wrapped_by_volume.items()
    )


def parse_data_keys(text: str) -> dict[str, bytes]:
    """{volume id or "*": wrapped key} from `VOLUME:BASE64,...`; InvalidRequest if malformed."""
    keys: dict[str, bytes] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        volume, separator, encoded = entry.partition(":")
        volume = volume.strip()
        if not separator or not (volume == ANY_VOLUME or volume.isdigit()):
            raise InvalidRequest("data_keys entries are VOLUME:BASE64 (VOLUME a number or *)")
        try:
            keys[volume] = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("a data_keys entry is not base64", volume=volume) from None
    return keys


def generate_data_keys(kms: Kms, volumes: list[str]) -> dict[str, bytes]:
    """A new data key for each of `volumes` (ids or "*"), wrapped; the plaintext is dropped."""
    return {volume: kms.generate_data_key()[1] for volume in volumes}


def open_sealers(kms_url: str, data_keys: str) -> VolumeSealers:
    """The sealers of a node's volumes: PLAIN without a KMS, else each data key unwrapped
    through the KMS (KeyUnavailable if one cannot be)."""
    if not kms_url:
        return PLAIN_VOLUMES
    try:
        wrapped_keys = parse_data_keys(data_keys)
        if not wrapped_keys:
            raise KeyUnavailable("a KMS is configured but no data key (data_keys is empty)")
        kms = kms_from_url(kms_url)
    except InvalidRequest as error:
        raise KeyUnavailable(str(error)) from None
    sealers: dict[str, Sealer] = {
        volume: AesGcmSealer(kms.decrypt(wrapped)) for volume, wrapped in wrapped_keys.items()
    }
    default = sealers.pop(ANY_VOLUME, None)
    return VolumeSealers({int(volume): sealer for volume, sealer in sealers.items()}, default)
