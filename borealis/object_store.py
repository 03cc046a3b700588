"""Object stores: where backups live (DESIGN.md section 11).

Two implementations of one small interface, chosen by URL:

- `file:///abs/path`: a local directory (the default, under the cluster's data
  directory). A put writes a temporary file, fsyncs it and renames it over the
  key's path, so a reader sees the whole old object or the whole new one.
- `s3://bucket/prefix`: any S3 API endpoint through boto3. The endpoint URL comes
  from the caller (config) or from the standard AWS environment variables
  (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL); credentials and region from the
  standard AWS chain (AWS_ACCESS_KEY_ID, ..., AWS_DEFAULT_REGION), with test
  defaults when none is set so that an S3-compatible local endpoint works as is.

Keys are relative, '/'-separated, without '..' parts; the store prepends its own
prefix. Every call is blocking: callers on an event loop use asyncio.to_thread.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from borealis.errors import InvalidRequest, NotFound, Unavailable

# S3 DeleteObjects takes at most 1000 keys per call.
S3_DELETE_BATCH_MAX = 1000
# One object's size bound on get: a chunk or image part is a few MiB.
OBJECT_BYTES_MAX = 256 * 2**20
S3_TIMEOUT_S = 10.0
S3_ATTEMPTS_MAX = 3


class ObjectStore(Protocol):
    @property
    def url(self) -> str: ...

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; NotFound when there is no such key."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key starting with `prefix`, sorted."""
        ...

    def delete(self, keys: Iterable[str]) -> None:
        """Deletes the keys; keys that do not exist are ignored."""
        ...


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts[:-1]):
        raise InvalidRequest("object key must be relative, without empty or '..' parts", key=key)
    if parts[-1] in ("", ".", ".."):
        raise InvalidRequest("object key must name an object", key=key)
    return key


class LocalObjectStore:
    """Objects as files under a directory; a key's '/' are subdirectories."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound("no such object", store=self.url, key=key) from None

    def list(self, prefix: str) -> list[str]:
        # Walk only the deepest directory the prefix names in full.
        directory_part = prefix.rpartition("/")[0]
        start = self.root / directory_part if directory_part else self.root
        if not start.is_dir():
            return []
        keys = []
        for path in start.rglob("*"):
            if not path.is_file() or path.name.startswith(".tmp-"):
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                keys.append(key)
        return sorted(keys)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)


class S3ObjectStore:
    """Objects under `prefix/` in one bucket of an S3 API endpoint."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        if not bucket:
            raise InvalidRequest("an s3:// URL names a bucket: s3://BUCKET[/PREFIX]")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        session = boto3.session.Session(
            region_name=os.environ.get("AWS_DEFAULT_REGION")
            or os.environ.get("AWS_REGION")
            or "us-east-1"
        )
        credentials: dict[str, Any] = {}
        if session.get_credentials() is None:
            # No credentials anywhere: an S3-compatible local endpoint (moto, MinIO
            # in dev mode) takes any; AWS itself refuses them with a clear error.
            credentials = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        self._client = session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(
                connect_timeout=S3_TIMEOUT_S,
                read_timeout=S3_TIMEOUT_S,
                retries={"max_attempts": S3_ATTEMPTS_MAX, "mode": "standard"},
            ),
            **credentials,
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def ensure_bucket(self) -> None:
        """Creates the bucket if it does not exist (local endpoints, tests)."""
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self._call(self._client.create_bucket, Bucket=self.bucket)

    def _call(self, method: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(**kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket"):
                raise NotFound(
                    "no such object or bucket", store=self.url, key=kwargs.get("Key", "")
                ) from None
            raise Unavailable(f"S3 call failed: {error}", store=self.url) from None
        except BotoCoreError as error:
            raise Unavailable(f"S3 endpoint unreachable: {error}", store=self.url) from None

    def put(self, key: str, data: bytes) -> None:
        self._call(self._client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        answer = self._call(self._client.get_object, Bucket=self.bucket, Key=self._key(key))
        if answer["ContentLength"] > OBJECT_BYTES_MAX:
            raise InvalidRequest("object larger than the bound", key=key)
        return bytes(answer["Body"].read())

    def list(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self._client.get_paginator("list_objects_v2")
        keys: list[str] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                keys.extend(self._relative(item["Key"]) for item in page.get("Contents", []))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code", "") == "NoSuchBucket":
                return []
            raise Unavailable(f"S3 list failed: {error}", store=self.url) from None
        except BotoCoreError as error:
            raise Unavailable(f"S3 endpoint unreachable: {error}", store=self.url) from None
        return sorted(keys)

    def delete(self, keys: Iterable[str]) -> None:
        full_keys = [self._key(key) for key in keys]
        for start in range(0, len(full_keys), S3_DELETE_BATCH_MAX):
            batch = full_keys[start : start + S3_DELETE_BATCH_MAX]
            self._call(
                self._client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )


def object_store_from_url(url: str, endpoint_url: str | None = None) -> ObjectStore:
    """The store a URL names: file:///abs/dir or s3://bucket[/prefix]."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidRequest("a file:// store URL has an absolute path: file:///DIR", url=url)
        return LocalObjectStore(Path(parts.path))
    if parts.scheme == "s3":
        return S3ObjectStore(parts.netloc, parts.path, endpoint_url or None)
    raise InvalidRequest("object store URL must be file:///DIR or s3://BUCKET[/PREFIX]", url=url)
