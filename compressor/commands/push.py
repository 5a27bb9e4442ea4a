"""`cli.py push DIR --repo-id ORG/NAME`: publish a compressed model; and `--push-to` for the commands that write one.

`add_push_to_arguments`, `check_push_to` and `push_if_asked` let any command that writes an output directory
(`compress`, later `distill`) publish it at the end; the repo id and the token are checked before the slow work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compressor.commands.base import Command


def _add_publish_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--commit-message", metavar="TEXT", help="the commit message (default: Upload <dir> ...)")


def add_push_to_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--push-to", metavar="ORG/NAME",
                        help="also publish the output directory to this Hub repository (token: HF_TOKEN or "
                             "`hf auth login`)")
    parser.add_argument("--push-revision", metavar="BRANCH", help="with --push-to: push to this branch")
    _add_publish_options(parser)


def check_push_to(args: argparse.Namespace) -> None:
    """Fail before any heavy work when --push-to cannot succeed: a malformed repo id or no token."""
    if args.push_to:
        from compressor.hub import check_repo_id, resolve_token

        check_repo_id(args.push_to)
        resolve_token()


def push_if_asked(args: argparse.Namespace, out: Path, stdout_is_data: bool = False) -> None:
    """Publish `out` when --push-to was given; the "pushed" line goes to stderr when stdout carries data (JSON)."""
    if args.push_to:
        from compressor.errors import PublishError
        from compressor.hub import push_to_hub

        try:
            url = push_to_hub(out, args.push_to, private=args.private, revision=args.push_revision,
                              commit_message=args.commit_message)
        except PublishError as error:
            raise PublishError(f"wrote {out}/ but did not publish it: {error}; retry with `cli.py push {out} "
                               f"--repo-id {args.push_to}`") from None
        print(f"pushed {out}/ to {url}", file=sys.stderr if stdout_is_data or getattr(args, "json", False)
              else sys.stdout)


class PushCommand(Command):
    name = "push"
    help = "publish a directory written by compress to the Hugging Face Hub"

    @classmethod
    def register(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("directory", metavar="DIR", help="a directory written by `cli.py compress`")
        parser.add_argument("--repo-id", required=True, metavar="ORG/NAME", help="the Hub repository to push to")
        parser.add_argument("--revision", metavar="BRANCH", help="push to this branch (created if needed)")
        _add_publish_options(parser)

    def run(self, args: argparse.Namespace) -> int:
        from compressor.hub import push_to_hub

        url = push_to_hub(args.directory, args.repo_id, private=args.private, revision=args.revision,
                          commit_message=args.commit_message)
        print(f"pushed {args.directory} to {url}")
        return 0
