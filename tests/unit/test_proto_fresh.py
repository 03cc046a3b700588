"""The committed protobuf and gRPC modules are what `make proto` generates from proto/*.proto.

The generated text names each .proto by its path from the include root
("proto/storage.proto") and imports its siblings as `proto.admin_pb2`, so the
regeneration copies the .proto files into <tmp>/proto/ and runs protoc with -I <tmp>,
exactly as `make proto` runs it with -I . from the repository root.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"
PROTOS = sorted(PROTO_DIR.glob("*.proto"))
SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")
GENERATED = [proto.stem + suffix for proto in PROTOS for suffix in SUFFIXES]
PROTOC_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("proto_fresh")
    (root / "proto").mkdir()
    for proto in PROTOS:
        shutil.copy2(proto, root / "proto" / proto.name)
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{root}",
        f"--python_out={root}",
        f"--grpc_python_out={root}",
        f"--pyi_out={root}",
        *(str(root / "proto" / proto.name) for proto in PROTOS),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=PROTOC_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, f"protoc failed:\n{result.stderr}"
    return root / "proto"


def test_there_are_protos_to_check() -> None:
    assert {proto.name for proto in PROTOS} >= {"storage.proto", "admin.proto"}


def test_no_generated_module_is_missing_or_extra(regenerated: Path) -> None:
    produced = {path.name for path in regenerated.iterdir() if "_pb2" in path.name}
    committed = {path.name for path in PROTO_DIR.iterdir() if "_pb2" in path.name}
    assert produced == set(GENERATED)
    assert committed == produced, "generated modules differ from proto/*.proto: run `make proto`"


@pytest.mark.parametrize("name", GENERATED)
def test_generated_module_is_fresh(regenerated: Path, name: str) -> None:
    committed = PROTO_DIR / name
    assert committed.exists(), f"proto/{name} is missing: run `make proto`"
    fresh = (regenerated / name).read_bytes()
    assert committed.read_bytes() == fresh, (
        f"proto/{name} is stale or was edited by hand: run `make proto`"
    )
