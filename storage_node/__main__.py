"""python -m storage_node --config FILE [--set key=value ...] [--name N --data-dir D --port P --az A]"""

from __future__ import annotations

import sys

import uvloop

from borealis import config as config_module
from borealis import faults, log
from borealis.errors import BorealisError
from storage_node.config import StorageNodeConfig
from storage_node.server import StorageNode


def parse_args(argv: list[str]) -> StorageNodeConfig:
    return config_module.from_command_line(
        StorageNodeConfig,
        "storage_node",
        argv,
        prog="python -m storage_node",
        description="Run a Borealis storage node.",
        flags=("name", "data_dir", "port", "az", "host"),
    )


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except BorealisError as error:
        print(f"storage_node: {error}", file=sys.stderr)
        return 2
    log.configure(config.log_level)
    faults.configure_from_env()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    uvloop.run(StorageNode(config).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
