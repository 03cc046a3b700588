"""python -m compute_node --config FILE [--set key=value ...] [--role writer] [--name N] ..."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvloop

from borealis import config as config_module
from borealis import faults, log
from borealis.errors import BorealisError
from compute_node.config import ComputeNodeConfig
from compute_node.instance import Instance


def parse_args(argv: list[str]) -> ComputeNodeConfig:
    parser = argparse.ArgumentParser(
        prog="python -m compute_node", description="Run a Borealis instance."
    )
    parser.add_argument("--config", type=Path, help="TOML file; settings under [compute_node]")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting"
    )
    for flag in ("name", "role", "data-dir", "port", "cluster-file"):
        parser.add_argument(f"--{flag}")
    args = parser.parse_args(argv)
    overrides = list(args.set)
    for flag in ("name", "role", "data_dir", "port", "cluster_file"):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{flag}={value}")
    return config_module.load(ComputeNodeConfig, args.config, overrides, table="compute_node")


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
