"""python -m router --config FILE [--set key=value ...]"""

from __future__ import annotations

import sys

import uvloop

from borealis import config as config_module
from borealis import faults, log
from borealis.errors import BorealisError
from router.config import RouterConfig
from router.proxy import Router


def parse_args(argv: list[str]) -> RouterConfig:
    return config_module.from_command_line(
        RouterConfig,
        "router",
        argv,
        prog="python -m router",
        description="Run the Borealis router (writer, reader and custom endpoints).",
        flags=("name", "data_dir", "port", "cluster_file"),
    )


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except BorealisError as error:
        print(f"router: {error}", file=sys.stderr)
        return 2
    log.configure(config.log_level)
    faults.configure_from_env()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        uvloop.run(Router(config).run())
    except (BorealisError, OSError) as error:
        log.get_logger("router").error("router failed", error=str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
