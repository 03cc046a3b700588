"""python -m storage_node --config FILE [--set key=value ...] [--name N --data-dir D --port P --az A]"""

from __future__ import annotations

import sys

import uvloop

from borealis import config as config_module
from borealis import faults, log, rpc
from borealis.errors import BorealisError, KeyUnavailable
from storage_node.config import StorageNodeConfig
from storage_node.server import StorageNode

# The exit status of a node that cannot get or use its data keys.
EXIT_NO_DATA_KEY = 3


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
    try:
        rpc.transport()
    except BorealisError as error:
        # Without its credentials a node could serve only in plain text: it does not.
        log.get_logger("storage_node").error(
            "cannot load the cluster's TLS files; not starting", cause=str(error)
        )
        return 2
    try:
        node = StorageNode(config)
    except KeyUnavailable as error:
        # Before any port is open: a node that cannot open its data serves nothing.
        log.get_logger("storage_node").error(
            "cannot use the data keys; not starting", node=config.name, cause=str(error)
        )
        return EXIT_NO_DATA_KEY
    uvloop.run(node.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
