"""python -m compute_node --config FILE [--set key=value ...] [--role writer] [--name N] ..."""

from __future__ import annotations

import sys

import uvloop

from borealis import config as config_module
from borealis import faults, log
from borealis.errors import BorealisError
from compute_node.config import ComputeNodeConfig
from compute_node.instance import Instance


def parse_args(argv: list[str]) -> ComputeNodeConfig:
    return config_module.from_command_line(
        ComputeNodeConfig,
        "compute_node",
        argv,
        prog="python -m compute_node",
        description="Run a Borealis instance.",
        flags=("name", "role", "data_dir", "port", "cluster_file"),
    )


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
        instance = Instance(config)
    except BorealisError as error:
        print(f"compute_node: {error}", file=sys.stderr)
        return 2
    log.configure(config.log_level)
    faults.configure_from_env()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        uvloop.run(instance.run())
    except BorealisError as error:
        log.get_logger("compute_node").error("instance failed", error=str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
