"""The toolkit installed from its wheel, not from the source tree: built-in recipes ship inside the package.

The wheel is built from a copy of the project's files (nothing is written into the checkout), installed without
dependencies into a fresh venv that reuses this venv's installed libraries (torch, transformers, ...) through a
`.pth` path line (a path line does not run the editable install's finder, so the source checkout stays invisible),
and driven from another working directory through the `compressor` console script.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
#: what the wheel is built from: the package, the recipes it links to, and the metadata
PROJECT_FILES = ("pyproject.toml", "README.md", "compressor", "recipes")


def _run(command: list, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory) -> Path:
    """A venv holding the compressor wheel (and nothing else of it), seeing this venv's libraries."""
    root = tmp_path_factory.mktemp("packaging")
    project = root / "project"
    project.mkdir()
    for name in PROJECT_FILES:
        source = REPOSITORY / name
        if source.is_dir():
            shutil.copytree(source, project / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, project / name)
    wheels = root / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", wheels, project], cwd=root)
    (wheel,) = wheels.glob("compressor-*.whl")

    environment = root / "venv"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    site_packages = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=root).strip())
    (site_packages / "reuse-libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-compile", "-q", wheel],
         cwd=root)
    return environment


def _clean_environment(tmp: Path) -> dict:
    """No PYTHONPATH (it would put a source checkout first), offline, native kernels cached in tmp."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", COMPRESSOR_CACHE=str(tmp / "cache"), OMP_NUM_THREADS="1")
    return env


def test_the_wheel_installs_a_package_outside_the_checkout_that_ships_every_builtin_recipe(installed_venv,
                                                                                          tmp_path):
    python = installed_venv / "bin" / "python"
    where = _run([python, "-c", "import compressor, compressor.recipe as r; print(compressor.__file__); "
                  "print(r.RECIPES_DIR); print(' '.join(r.builtin_names()))"], cwd=tmp_path,
                 env=_clean_environment(tmp_path)).splitlines()
    assert Path(where[0]).is_relative_to(installed_venv), where
    assert Path(where[1]).is_relative_to(installed_venv), where
    shipped = sorted(path.stem for path in (REPOSITORY / "recipes").glob("*.yaml"))
    assert where[2].split() == shipped


def test_the_installed_console_script_lists_recipes_and_compresses_a_local_model(installed_venv, tmp_path,
                                                                                hf_vit_dir):
    env = _clean_environment(tmp_path)
    script = installed_venv / "bin" / "compressor"
    listing = _run([script, "recipes"], cwd=tmp_path, env=env)
    assert "act-calibrated" in listing and "tome" in listing
    out = tmp_path / "vit-tome"
    table = _run([script, "compress", hf_vit_dir, "--recipe", "tome", "--set", "token_merge.r=2", "--out", out,
                  "--latency-runs", "1", "--quiet"], cwd=tmp_path, env=env)
    assert "FLOPs" in table
    assert {"config.json", "model.safetensors", "recipe.yaml", "report.json", "README.md"} <= {
        path.name for path in out.iterdir()}
    assert "built-in:tome" in (out / "report.json").read_text()
