"""The ``floodgate`` command.

Each subcommand group lives in its own package and is imported only when it is
asked for, so ``floodgate edge …`` on a field box never loads cloud code.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from floodgate import __version__

# group -> (module with main(argv) -> int, one-line help)
GROUPS: dict[str, tuple[str, str]] = {
    "edge": ("edge.cli", "run and commission the edge agent of a site"),
    "sim": ("simulators.cli", "simulated Modbus devices and storm scenarios"),
    "cloud": ("cloud.cli", "the cloud collector: ingest and storage"),
    "demo": ("floodgate.demo", "the whole system on one machine, with simulated sites"),
}

EXIT_OK = 0
EXIT_USAGE = 2


def _usage() -> str:
    lines = [f"floodgate {__version__}", "", "usage: floodgate <group> [...]", "", "groups:"]
    lines += [f"  {name:<7} {text}" for name, (_, text) in GROUPS.items()]
    lines += ["", "Run 'floodgate <group> --help' for a group's commands."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return EXIT_OK if args else EXIT_USAGE
    if args[0] == "--version":
        print(__version__)
        return EXIT_OK
    group = GROUPS.get(args[0])
    if group is None:
        print(f"floodgate: unknown group {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(group[0])
    entry: Callable[[list[str]], int] = module.main
    return entry(args[1:])


if __name__ == "__main__":
    sys.exit(main())
