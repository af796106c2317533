"""The `defect-glm` command: one entry point whose subcommands reach every part of the project.

Each package contributes its subcommands through a `register(subparsers)` function in its
`cli` module; registering must stay cheap (no torch import) so that `--help` is instant.
Handlers are set with `set_defaults(handler=...)` and return an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("data_tools.cli", "finetune.cli", "model_server.cli", "bot.cli")


class CommandError(Exception):
    """An error the user can act on: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defect-glm",
        description="Defect-GLM: read wafer maps, answer questions about their defects, in Slack or locally.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subcommands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except CommandError as exc:
        print(f"defect-glm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`defect-glm … | head`): stop quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    # Run through the importable module so `CommandError` raised by subcommands is this same class.
    from defect_glm import main as _main

    sys.exit(_main())
