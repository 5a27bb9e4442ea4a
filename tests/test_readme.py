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


def test_the_main_job_names_scripts_recipes_and_a_detector_that_exist():
    """The main job's steps after the install run files of this repository: each script, the compressed source and
    the recipe must exist (running the job itself takes minutes: docs/benchmarks.md records it)."""
    import shlex

    from compressor.recipe import builtin_recipes

    setup = _console_block_after((REPOSITORY / "README.md").read_text(), "Set everything up")
    steps = [shlex.split(step) for step in setup.split("&&")][2:]  # after the venv and the install
    assert steps and all(step[0] == ".venv/bin/python" for step in steps)
    for step in steps:
        assert (REPOSITORY / step[1]).is_file(), step[1]
    compress = next(step for step in steps if step[1:3] == ["cli.py", "compress"])
    assert (REPOSITORY / compress[3] / "model.safetensors").is_file()
    recipe = compress[compress.index("--recipe") + 1]
    assert recipe in {name for name, _, _ in builtin_recipes()}
