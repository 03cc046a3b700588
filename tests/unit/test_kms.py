"""The local KMS (a master key file), KMS URLs, and the data keys of a node's config."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from borealis import config as config_module
from borealis.config import ConfigError
from borealis.encryption import ANY_VOLUME, PLAIN_VOLUMES, WHAT_RECORD, associated_data
from borealis.errors import InvalidRequest, KeyUnavailable
from borealis.kms import (
    AwsKms,
    LocalKms,
    create_master_key_file,
    format_data_keys,
    generate_data_keys,
    kms_from_url,
    open_sealers,
    parse_data_keys,
)
from storage_node.config import StorageNodeConfig

pytestmark = pytest.mark.unit


@pytest.fixture
def master_key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "master.key"
    create_master_key_file(path)
    return path


def test_the_master_key_file_is_private_and_never_overwritten(master_key: Path) -> None:
    assert stat.S_IMODE(master_key.stat().st_mode) == 0o600
    assert len(base64.b64decode(master_key.read_text().strip())) == 32
    before = master_key.read_bytes()
    with pytest.raises(InvalidRequest, match="exists already"):
        create_master_key_file(master_key)
    assert master_key.read_bytes() == before


def test_local_kms_wraps_and_unwraps_data_keys(master_key: Path) -> None:
    kms = LocalKms(master_key)
    data_key, wrapped = kms.generate_data_key()
    assert len(data_key) == 32 and data_key not in wrapped
    assert kms.decrypt(wrapped) == data_key
    assert kms.generate_data_key()[0] != data_key
    assert kms.url == f"local://{master_key}"


def test_local_kms_refuses_a_key_wrapped_under_another_master(
    master_key: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.key"
    create_master_key_file(other)
    _, wrapped = LocalKms(other).generate_data_key()
    with pytest.raises(KeyUnavailable, match="does not open under the master key"):
        LocalKms(master_key).decrypt(wrapped)
    changed = bytearray(LocalKms(master_key).generate_data_key()[1])
    changed[-1] ^= 1
    with pytest.raises(KeyUnavailable, match="does not open"):
        LocalKms(master_key).decrypt(bytes(changed))


def test_local_kms_names_what_is_wrong_with_the_master_key_file(master_key: Path) -> None:
    missing = master_key.with_name("missing.key")
    with pytest.raises(KeyUnavailable, match="cannot read the master key file") as raised:
        LocalKms(missing)
    assert str(missing) in str(raised.value)
    os.chmod(master_key, 0o644)
    with pytest.raises(KeyUnavailable, match="chmod 600"):
        LocalKms(master_key)
    os.chmod(master_key, 0o600)
    master_key.write_text("not base64 !\n")
    with pytest.raises(KeyUnavailable, match="base64"):
        LocalKms(master_key)
    master_key.write_text(base64.b64encode(bytes(16)).decode())
    with pytest.raises(KeyUnavailable, match="16 bytes, not 32"):
        LocalKms(master_key)


def test_kms_urls(master_key: Path) -> None:
    local = kms_from_url(f"local://{master_key}")
    assert isinstance(local, LocalKms) and local.path == master_key
    arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    aws = kms_from_url(f"aws-kms://{arn}?endpoint=http://127.0.0.1:4566&region=eu-west-1")
    assert isinstance(aws, AwsKms)
    assert (aws.key_id, aws.endpoint_url, aws.region) == (arn, "http://127.0.0.1:4566", "eu-west-1")
    assert aws.url == f"aws-kms://{arn}?endpoint=http://127.0.0.1:4566&region=eu-west-1"
    for bad in (
        "local://relative/master.key",
        "aws-kms://",
        "aws-kms://key?colour=blue",
        "vault://key",
        "",
    ):
        with pytest.raises(InvalidRequest):
            kms_from_url(bad)


def test_data_keys_text_round_trips_and_rejects_malformed_entries() -> None:
    keys = {"1": b"\x00wrapped one", ANY_VOLUME: b"\xffwrapped default"}
    assert parse_data_keys(format_data_keys(keys)) == keys
    assert parse_data_keys("") == {}
    for bad in ("1=AAAA", "x:AAAA", "1:not base64!", ":AAAA"):
        with pytest.raises(InvalidRequest):
            parse_data_keys(bad)


def test_open_sealers_unwraps_each_volume_key_and_the_default(master_key: Path) -> None:
    kms = LocalKms(master_key)
    wrapped = generate_data_keys(kms, ["1", ANY_VOLUME])
    sealers = open_sealers(kms.url, format_data_keys(wrapped))
    assert sealers.encrypted
    associated = associated_data(1, 0, 5, 0, WHAT_RECORD)
    own, default = sealers.of(1), sealers.of(2)
    assert own is not default
    assert own.open(own.seal(b"row", associated), associated) == b"row"
    # The two keys differ: one does not open what the other sealed.
    with pytest.raises(Exception, match="failed authentication"):
        default.open(own.seal(b"row", associated), associated)
    assert open_sealers("", "") is PLAIN_VOLUMES


def test_open_sealers_fails_clearly_without_the_master_key(master_key: Path) -> None:
    kms = LocalKms(master_key)
    data_keys = format_data_keys(generate_data_keys(kms, ["1"]))
    master_key.unlink()
    with pytest.raises(KeyUnavailable, match="cannot read the master key file"):
        open_sealers(kms.url, data_keys)
    with pytest.raises(KeyUnavailable, match="unknown KMS URL"):
        open_sealers("vault://x", data_keys)
    with pytest.raises(KeyUnavailable, match="no data key"):
        open_sealers(kms.url, "")


def test_a_storage_node_config_has_both_kms_url_and_data_keys_or_neither(tmp_path: Path) -> None:
    base = {"name": "s1", "data_dir": tmp_path}
    with pytest.raises(ConfigError, match="set together"):
        config_module.build(StorageNodeConfig, {**base, "kms_url": "local:///k"})
    with pytest.raises(ConfigError, match="set together"):
        config_module.build(StorageNodeConfig, {**base, "data_keys": "1:AAAA"})
    both = config_module.build(
        StorageNodeConfig, {**base, "kms_url": "local:///k", "data_keys": "1:AAAA"}
    )
    assert (both.kms_url, both.data_keys) == ("local:///k", "1:AAAA")
    assert config_module.build(StorageNodeConfig, base).kms_url == ""
