"""The command line: parse arguments, call the package, print, set the exit code.

Bad input ends as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys


class OneLineParser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (and exit 2) like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from compressor.commands import COMMANDS

    parser = OneLineParser(prog="cli.py", description="Compress pretrained ViT, Swin, ResNet and DETR models.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    subparsers.required = True
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.register(sub)
        sub.set_defaults(command_class=command)
    return parser


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading notes, progress of other tools) off the user's terminal."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()


def main(argv: list[str] | None = None) -> int:
    from compressor.errors import CompressorError

    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        return args.command_class().run(args)
    except CompressorError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        from compressor.output_claim import release_all

        release_all()  # a command that failed after claiming its output gives the claim back


if __name__ == "__main__":
    sys.exit(main())
