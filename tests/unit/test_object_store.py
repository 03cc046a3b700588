"""borealis/object_store.py: the local directory store and store URLs (S3 against moto's
server is in tests/integration/test_backup_restore.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from borealis.errors import InvalidRequest, NotFound
from borealis.object_store import LocalObjectStore, S3ObjectStore, object_store_from_url

pytestmark = pytest.mark.unit


def test_put_get_list_delete(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "store")
    store.put("volumes/a/pgs/000001/log/1-2.chunk", b"one")
    store.put("volumes/a/pgs/000001/log/3-4.chunk", b"two")
    store.put("volumes/a/manifest.json", b"{}")
    store.put("volumes/b/manifest.json", b"{}")
    assert store.get("volumes/a/pgs/000001/log/3-4.chunk") == b"two"
    assert store.list("volumes/a/pgs/") == [
        "volumes/a/pgs/000001/log/1-2.chunk",
        "volumes/a/pgs/000001/log/3-4.chunk",
    ]
    # A prefix that ends inside a name matches by string, as S3 does.
    assert store.list("volumes/a/pgs/000001/log/3") == ["volumes/a/pgs/000001/log/3-4.chunk"]
    assert len(store.list("")) == 4
    assert store.list("nothing/here/") == []
    store.delete(["volumes/a/pgs/000001/log/1-2.chunk", "volumes/a/never-existed"])
    with pytest.raises(NotFound):
        store.get("volumes/a/pgs/000001/log/1-2.chunk")
    assert store.list("volumes/a/pgs/") == ["volumes/a/pgs/000001/log/3-4.chunk"]


def test_put_replaces_atomically_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    store.put("a/b", b"old")
    store.put("a/b", b"new" * 1000)
    assert store.get("a/b") == b"new" * 1000
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == ["b"]


def test_missing_object_is_not_found(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    with pytest.raises(NotFound):
        store.get("no/such/key")
    store.put("dir/key", b"x")
    with pytest.raises(NotFound):
        store.get("dir")  # a directory is not an object


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "a/", "./a", ".."])
def test_bad_keys_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalObjectStore(tmp_path / "store")
    with pytest.raises(InvalidRequest):
        store.put(key, b"x")
    assert not (tmp_path / "b").exists()


def test_urls(tmp_path: Path) -> None:
    local = object_store_from_url(f"file://{tmp_path}/backup")
    assert isinstance(local, LocalObjectStore)
    assert local.url == f"file://{tmp_path}/backup"
    s3 = object_store_from_url("s3://bucket/some/prefix", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3ObjectStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == (
        "bucket",
        "some/prefix",
        "http://127.0.0.1:1",
    )
    assert s3.url == "s3://bucket/some/prefix"
    for bad in ("file://relative/path", "http://host/x", "s3://", "backup"):
        with pytest.raises(InvalidRequest):
            object_store_from_url(bad)
