"""Reliability and safety: interrupted writes, repeated runs, untrusted files.

- A `compress` or `save` killed (SIGKILL, no cleanup possible) at any moment leaves either no output or the previous
  output intact, and the next run clears what the killed one left behind.
- The same source, recipe and seed give byte-identical `model.safetensors` in separate processes.
- No load path unpickles: a pickle that would run code is refused, `torch.load` is never called without
  `weights_only=True`, remote code never runs unless asked, YAML tags never construct objects.
- The recipe validator, fed thousands of generated recipes and overrides, raises nothing but one-line RecipeErrors.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compressor
from checkpoints_compressed import SMALL_ACT, copy_compressed
from compressor.atomic_dir import atomic_directory, exchange, remove_stale_staging
from compressor.errors import CompressorError, RecipeError
from compressor.recipe import Recipe
from compressor.sources import load_source
from file_trees import tree

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def staging_left(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


# --- atomic output ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reloaded_result(compressed_vit_dir):
    """The compressed fixture as a CompressionResult, ready to be saved again."""
    import json

    from compressor.pipeline import CompressionResult

    return CompressionResult(load_source(compressed_vit_dir), Recipe.load(str(compressed_vit_dir / "recipe.yaml")),
                             json.loads((compressed_vit_dir / "report.json").read_text()), 0)


def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def _half_written_weights(model, filename, metadata=None):
    Path(filename).write_bytes(b"\0" * 100)
    _die()


def _save_in_a_child_killed_at(step: str, result, out: Path, monkeypatch) -> int:
    """Fork; the child saves `result` to `out` and SIGKILLs itself at `step`. Returns the child's wait status."""
    import compressor.atomic_dir as atomic_dir
    import compressor.serialization as serialization

    real_exchange = atomic_dir.exchange
    hooks = {"weights": (serialization, "save_model", _half_written_weights),
             "before-rename": (atomic_dir, "_fsync_tree", _die),
             "after-exchange": (atomic_dir, "exchange", lambda a, b: real_exchange(a, b) and _die())}
    module, name, hook = hooks[step]
    monkeypatch.setattr(module, name, hook)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            serialization.save(result, out, overwrite=True)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("step, previous", [("weights", False), ("weights", True), ("before-rename", False),
                                            ("before-rename", True), ("after-exchange", True)])
def test_save_killed_at_any_step_leaves_no_output_or_the_previous_one(step, previous, reloaded_result,
                                                                      compressed_vit_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    if previous:
        copy_compressed(compressed_vit_dir, out)
        (out / "mine.txt").write_text("the previous output")
    before = tree(out) if previous else None
    status = _save_in_a_child_killed_at(step, reloaded_result, out, monkeypatch)
    monkeypatch.undo()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if step == "after-exchange":  # the exchange is the commit point: the new output is complete
        assert (out / "model.safetensors").read_bytes() == (compressed_vit_dir / "model.safetensors").read_bytes()
        assert not (out / "mine.txt").exists()
    elif previous:
        assert tree(out) == before
    else:
        assert not out.exists()
    # what the killed process left is hidden, and the next write to the same output removes it
    assert staging_left(tmp_path) and all(name.startswith(".") for name in staging_left(tmp_path))
    with atomic_directory(out, overwrite=True) as staging:
        (staging / "x").write_text("x")
    assert staging_left(tmp_path) == []


def _kill_when(process: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILL `process` as soon as `ready()` is true; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            process.kill()
            process.wait()
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.002)
    process.kill()
    raise AssertionError("the process neither reached the moment nor finished")


def test_compress_killed_mid_write_keeps_the_previous_output(hf_vit_dir, compressed_vit_dir, tmp_path):
    """A real `cli.py compress --overwrite`, SIGKILLed from outside as soon as it writes weights: the old output
    survives."""
    out = copy_compressed(compressed_vit_dir, tmp_path / "out")
    before = tree(out)

    def ready():
        return any((p / "model.safetensors").exists() for p in tmp_path.glob(".out.partial-*"))

    process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "compress", str(hf_vit_dir), "--recipe", "act",
                                "--set", "act.rounds=5", "--out", str(out), "--overwrite", "--quiet",
                                "--latency-runs", "1"], env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    killed = _kill_when(process, ready)
    if killed:
        assert tree(out) == before
    else:  # finished between two polls: then the new output must be complete and loadable
        assert "rounds: 5" in (out / "recipe.yaml").read_text()
        load_source(out)


def test_exchange_swaps_two_directories_atomically(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "f").write_text("first")
    (second / "f").write_text("second")
    swapped = exchange(first, second)
    if sys.platform != "linux" and not swapped:  # elsewhere the fallback (tested below) is used
        return
    assert swapped
    assert (first / "f").read_text() == "second" and (second / "f").read_text() == "first"


def test_replacing_without_exchange_falls_back_to_rename(tmp_path, monkeypatch):
    import compressor.atomic_dir as atomic_dir

    monkeypatch.setattr(atomic_dir, "exchange", lambda a, b: False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text('{"compression_config": {}}')  # an earlier output, which --overwrite replaces
    with atomic_directory(out, overwrite=True) as staging:
        (staging / "new").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new"] and staging_left(tmp_path) == []


def test_output_directory_gets_the_usual_permissions(tmp_path):
    with atomic_directory(tmp_path / "out") as staging:
        (staging / "x").write_text("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask


def test_staging_of_a_live_process_is_left_alone(tmp_path):
    live = tmp_path / f".out.partial-{os.getpid()}-abc"
    dead = tmp_path / ".out.partial-999999999-abc"
    live.mkdir()
    dead.mkdir()
    assert remove_stale_staging(tmp_path / "out") == [dead]
    assert live.exists()


# --- determinism ------------------------------------------------------------------------------------------------

def test_same_source_recipe_and_seed_give_byte_identical_files_in_separate_processes(hf_deit_dir, tmp_path):
    """One run in this process, one in a fresh process with another hash seed: the files are byte-identical."""
    compressor.save(compressor.compress(hf_deit_dir, "act", overrides=SMALL_ACT, seed=3, progress=False,
                                        latency_runs=1), tmp_path / "a")
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), "compress", str(hf_deit_dir), "--recipe", "act",
                           *[arg for o in SMALL_ACT for arg in ("--set", o)], "--seed", "3", "--out", "b",
                           "--quiet", "--latency-runs", "1"], cwd=tmp_path, capture_output=True, text=True,
                          env={**ENV, "PYTHONHASHSEED": "12345"}, timeout=300)
    assert done.returncode == 0, done.stderr
    outputs = [tmp_path / "a", tmp_path / "b"]
    for name in ("model.safetensors", "recipe.yaml", "config.json"):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    other_seed = compressor.compress(hf_deit_dir, "act", overrides=SMALL_ACT, seed=4, progress=False, latency_runs=1)
    compressor.save(other_seed, tmp_path / "c")
    assert (tmp_path / "c" / "model.safetensors").read_bytes() != (outputs[0] / "model.safetensors").read_bytes()


# --- no pickle, no remote code, no YAML objects --------------------------------------------------------------------

class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


@pytest.mark.parametrize("fixture", ["hf_vit_dir", "timm_vit_dir"])
def test_a_pickle_that_would_run_code_is_never_unpickled(fixture, request, tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(request.getfixturevalue(fixture), directory)
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    with open(directory / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weight": _Payload(str(marker))}, handle)
    with pytest.raises(CompressorError) as raised:
        load_source(directory)
    assert "\n" not in str(raised.value)
    assert not marker.exists()


def test_a_checkpoint_file_that_would_run_code_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / "resnet20.th"
    torch.save({"state_dict": {"conv1.weight": _Payload(str(marker))}}, checkpoint)
    with pytest.raises(CompressorError) as raised:
        load_source(checkpoint)
    assert "\n" not in str(raised.value)
    assert not marker.exists()


def test_every_load_path_reads_weights_without_unpickling(hf_vit_dir, timm_vit_dir, compressed_vit_dir,
                                                          monkeypatch):
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load on a load path"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads on a load path"))
    for source in (hf_vit_dir, timm_vit_dir, compressed_vit_dir):
        load_source(source)
    assert all(weights_only is True for weights_only in calls), calls


def _calls(text: str, opening: str) -> list[str]:
    """Each `opening...)` call in `text`, up to its balanced closing parenthesis."""
    calls = []
    for match in re.finditer(re.escape(opening), text):
        depth, end = 1, match.end()
        while depth and end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        calls.append(text[match.start():end])
    return calls


def test_the_package_source_has_no_unsafe_loader():
    """A static check over compressor/: every torch.load is weights_only, YAML is safe, no pickle, no remote code
    switched on by the toolkit itself."""
    problems = []
    for path in sorted((REPO / "compressor").rglob("*.py")):
        text = path.read_text()
        for call in _calls(text, "torch.load("):
            if "weights_only=True" not in call:
                problems.append(f"{path.name}: {call}")
        for unsafe in (r"yaml\.load\(", r"yaml\.unsafe_load", r"yaml\.full_load", r"import pickle", r"pickle\.load",
                       r"trust_remote_code\s*=\s*True\s*[,)]", r"Loader=yaml\.Loader", r"UnsafeLoader"):
            if re.search(unsafe, text):
                problems.append(f"{path.name}: {unsafe}")
    assert problems == []


def test_remote_code_runs_only_when_asked(hf_vit_dir, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoConfig.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", classmethod(recording))
    load_source(hf_vit_dir)
    compressor.load(hf_vit_dir)
    assert seen and not any(seen)
    load_source(hf_vit_dir, trust_remote_code=True)
    assert seen[-1] is True


def test_a_repository_with_custom_code_does_not_run_it_by_default(hf_vit_dir, tmp_path):
    import json

    directory = tmp_path / "custom"
    shutil.copytree(hf_vit_dir, directory)
    marker = tmp_path / "ran"
    (directory / "configuration_custom.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import ViTConfig\nclass CustomConfig(ViTConfig):\n    model_type = 'vit'\n")
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig"}
    (directory / "config.json").write_text(json.dumps(config))
    try:
        load_source(directory)
    except CompressorError as error:
        assert "\n" not in str(error)
    assert not marker.exists()


def test_yaml_tags_never_construct_objects(tmp_path):
    marker = tmp_path / "ran"
    text = (f"description: !!python/object/apply:pathlib.Path.write_text [!!python/object/apply:pathlib.Path "
            f"['{marker}'], 'ran']\ncompress_stage:\n  act: {{}}\n")
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError):
        Recipe.load(str(path))
    with pytest.raises(RecipeError):
        Recipe.load("act").with_overrides(["act.rounds=!!python/object/apply:os.getpid []"])
    assert not marker.exists()


# --- fuzz -------------------------------------------------------------------------------------------------------

PARAM_NAMES = ["targets", "ignore", "rounds", "bucket_width", "cluster", "fidelity_target", "bucket_widths", "plan",
               "roundz"]
scalars = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True)
           | st.sampled_from(["auto", "queries", "keys", "both", "re:(", "re:vit.*", "*.attention", "", " "])
           | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.sampled_from(PARAM_NAMES), inner, max_size=4),
                      max_leaves=12)
pass_entries = st.dictionaries(st.sampled_from(PARAM_NAMES) | st.text(max_size=6), values, max_size=5)
stages = st.dictionaries(st.sampled_from(["act", "actt", "tome"]) | st.text(max_size=5),
                         pass_entries | values, max_size=3)
recipes = st.dictionaries(st.sampled_from(["description", "compress_stage", "refine_stage", "_stage", "x"])
                          | st.text(max_size=10), stages | values, max_size=4) | values


def _assert_one_line_recipe_error_or_valid(parse) -> None:
    try:
        recipe = parse()
    except RecipeError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert Recipe.from_yaml(recipe.to_yaml()) == recipe


@settings(max_examples=1000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(document=recipes)
def test_a_thousand_generated_recipes_give_a_recipe_or_a_one_line_recipe_error(document):
    _assert_one_line_recipe_error_or_valid(lambda: Recipe.from_dict(document, "fuzz.yaml"))
    try:
        text = yaml.safe_dump(document, allow_unicode=True)
    except (yaml.YAMLError, ValueError, TypeError):
        return
    _assert_one_line_recipe_error_or_valid(lambda: Recipe.from_yaml(text, "fuzz.yaml"))


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(override=st.text(max_size=40) | st.builds(lambda k, v: f"{k}={v}",
                                                 st.sampled_from([f"act.{p}" for p in PARAM_NAMES]
                                                                 + ["compress_stage.act.rounds", "x.y.z.w", "act"]),
                                                 st.text(max_size=20)))
def test_a_thousand_generated_overrides_give_a_recipe_or_a_one_line_recipe_error(override):
    _assert_one_line_recipe_error_or_valid(lambda: Recipe.load("act").with_overrides([override]))


# --- checks before work ---------------------------------------------------------------------------------------------

def test_a_second_run_on_the_same_output_is_refused_up_front(hf_vit_dir, tmp_path):
    """A real second process holds the claim on `out` (as a running compress does); compress is refused at once."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from compressor.output_claim import "
         "claim_output; claim_output(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = subprocess.run([sys.executable, str(REPO / "cli.py"), "compress", str(hf_vit_dir), "--recipe", "act",
                               "--out", str(out), "--quiet"], capture_output=True, text=True, env=ENV, timeout=300)
    finally:
        holder.communicate("")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "another run is writing" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
    # once the holder is gone the claim is free, and the lock file does not outlive the run
    assert subprocess.run([sys.executable, str(REPO / "cli.py"), "compress", str(hf_vit_dir), "--recipe", "act",
                           "--out", str(out), "--quiet", "--latency-runs", "1"], env=ENV, timeout=300).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_full_disk_is_one_line_and_leaves_nothing(hf_vit_dir, tmp_path):
    """A real write failure: the child may write no file larger than 64 kB (RLIMIT_FSIZE, EFBIG like ENOSPC)."""
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536)); from compressor.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "compress", str(hf_vit_dir), "--recipe", "act", "--out",
                           "out", "--quiet", "--latency-runs", "1"], cwd=tmp_path, capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "file too large" in done.stderr and "nothing was written" in done.stderr
    assert list(tmp_path.iterdir()) == []


# --- small things: strict JSON, file modes ---------------------------------------------------------------------------

def test_reports_are_strict_json_with_null_for_a_measurement_that_is_not_finite():
    from compressor import strict_json

    def refuse(constant):
        raise ValueError(constant)

    text = strict_json.dumps({"cosine": float("nan"), "ratios": [1.5, float("inf"), -float("inf")], "n": 3})
    assert json.loads(text, parse_constant=refuse) == {"cosine": None, "ratios": [1.5, None, None], "n": 3}


def test_a_saved_report_is_strict_json(compressed_vit_dir):
    def refuse(constant):
        raise ValueError(constant)

    json.loads((compressed_vit_dir / "report.json").read_text(), parse_constant=refuse)


def test_the_weights_file_gets_the_same_permissions_as_the_other_files(compressed_vit_dir):
    modes = {path.name: path.stat().st_mode & 0o777 for path in compressed_vit_dir.iterdir() if path.is_file()}
    assert modes["model.safetensors"] == modes["report.json"] == modes["config.json"], modes
