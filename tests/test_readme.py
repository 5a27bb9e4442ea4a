"""The README's commands are the ones that are run: CI installs and tests exactly as the README says."""

from __future__ import annotations

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def _console_block_after(text: str, heading: str) -> str:
    """The first ```console block after the line `heading`."""
    start = text.index(heading)
    return re.search(r"```console\n(.*?)\n```", text[start:], re.S).group(1).strip()


def test_ci_runs_the_readme_test_command_in_parallel():
    readme = (REPOSITORY / "README.md").read_text()
    command = _console_block_after(readme, "Run the tests")
    assert command.startswith(".venv/bin/python -m pytest") and re.search(r" -n (auto|\d+)\b", command)
    ci = (REPOSITORY / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == command
    setup = _console_block_after(readme, "Set everything up")
    assert setup.startswith(ci[-2])  # the README's setup, before its main job, is CI's install line
