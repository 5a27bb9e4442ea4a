"""The command line: compress / inspect / recipes, and bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compressor.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python cli.py ...` in a real subprocess, as a user runs it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_compress_prints_the_table_and_writes_the_output(hf_vit_dir, tmp_path):
    done = run_cli("compress", str(hf_vit_dir), "--recipe", "act", "--set", "act.rounds=8", "--out", "vit-act",
                   "--latency-runs", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "FLOPs" in done.stdout and "prototypes/N" in done.stdout
    out = tmp_path / "vit-act"
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"] == "built-in:act"
    assert "rounds: 8" in (out / "recipe.yaml").read_text()


def test_compress_names_the_output_after_model_and_recipe(hf_vit_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compress", str(hf_vit_dir), "--recipe", "act", "--latency-runs", "1", "--quiet"]) == 0
    assert (tmp_path / f"{hf_vit_dir.name}-act" / "model.safetensors").is_file()


def test_existing_output_needs_overwrite(hf_vit_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["compress", str(hf_vit_dir), "--recipe", "act", "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces only an earlier output of this toolkit: the user's own directory stays
    assert main(["compress", str(hf_vit_dir), "--recipe", "act", "--out", str(out), "--quiet", "--overwrite",
                 "--latency-runs", "1"]) == 2
    assert "not an earlier output" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    earlier = tmp_path / "earlier"
    assert main(["compress", str(hf_vit_dir), "--recipe", "act", "--out", str(earlier), "--quiet",
                 "--latency-runs", "1"]) == 0
    (earlier / "note.txt").write_text("written after the run")
    assert main(["compress", str(hf_vit_dir), "--recipe", "act", "--out", str(earlier), "--quiet", "--overwrite",
                 "--latency-runs", "1"]) == 0
    assert not (earlier / "note.txt").exists() and (earlier / "model.safetensors").is_file()


def test_inspect_lists_the_sites_a_recipe_touches(hf_detr_dir, capsys):
    assert main(["inspect", str(hf_detr_dir), "--recipe", "act", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "hf-detr"
    assert info["passes"]["act"]["sites"] == ["model.encoder.layers.0.self_attn", "model.encoder.layers.1.self_attn"]
    assert len(info["passes"]["act"]["candidates"]) == 4  # decoder self-attention could be targeted too
    assert info["params"] > 0 and info["flops"] > 0


def test_inspect_without_recipe_shows_every_pass(timm_swin_dir, capsys):
    assert main(["inspect", str(timm_swin_dir)]) == 0
    out = capsys.readouterr().out
    assert "timm" in out.lower() and "act: 0 of 0 candidate sites" in out


def test_recipes_lists_the_built_ins(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert "act" in names and "act-calibrated" in names
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # every recipe has a description


BAD_RECIPE_YAML = "compress_stage:\n  act: [unclosed\n"
UNKNOWN_PASS_YAML = "description: x\ncompress_stage:\n  actt: {}\n"
UNKNOWN_PARAM_YAML = "description: x\ncompress_stage:\n  act:\n    roundz: 3\n"
WRONG_TYPE_YAML = "description: x\ncompress_stage:\n  act:\n    rounds: many\n"


@pytest.mark.parametrize("case, args, expected", [
    ("unknown recipe", ["--recipe", "no-such-recipe"], "no-such-recipe"),
    ("bad yaml", ["--recipe", "{bad}"], "not valid YAML"),
    ("unknown pass", ["--recipe", "{unknown_pass}"], "unknown pass 'actt'"),
    ("unknown parameter", ["--recipe", "{unknown_param}"], "unknown act parameter 'roundz'"),
    ("wrong type", ["--recipe", "{wrong_type}"], "rounds expects an integer"),
    ("bad override", ["--recipe", "act", "--set", "act.cluster=tokens"], "one of queries, keys, both"),
    ("unsupported model", ["--recipe", "act", "--source", "{unsupported}"], "not support"),
    ("missing path", ["--recipe", "act", "--source", "./no/such/dir"], "no such model directory"),
    ("missing calibration data", ["--recipe", "act-calibrated", "--calib", "./nothing.parquet"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, args, expected, hf_vit_dir, tmp_path, capsys):
    files = {"bad": BAD_RECIPE_YAML, "unknown_pass": UNKNOWN_PASS_YAML, "unknown_param": UNKNOWN_PARAM_YAML,
             "wrong_type": WRONG_TYPE_YAML}
    for name, text in files.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    unsupported = tmp_path / "gpt2"
    from transformers import GPT2Config, GPT2Model

    if case == "unsupported model":
        GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2)).save_pretrained(unsupported)
        capsys.readouterr()  # save_pretrained's progress bar (shown until some earlier test ran the CLI) is not ours
    args = [a.format(**{k: tmp_path / f"{k}.yaml" for k in files}, unsupported=unsupported) for a in args]
    source = str(hf_vit_dir)
    if "--source" in args:
        index = args.index("--source")
        source = args[index + 1]
        del args[index:index + 2]
    out = tmp_path / "out"
    status = main(["compress", source, *args, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert expected in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging directory left


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    done = run_cli("compress", str(tmp_path / "missing"), "--recipe", "act", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:]  # progress lines, then one error
    quiet = run_cli("compress", str(tmp_path / "missing"), "--recipe", "act", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 2 and quiet.stderr.count("\n") == 1


def test_usage_errors_are_one_line_too(tmp_path):
    done = run_cli("compress", "--recipe", "act", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "SOURCE" in done.stderr.upper()


def test_output_parents_are_created_and_removed_again_on_failure(hf_vit_dir, tmp_path, capsys):
    nested = tmp_path / "a" / "b" / "out"
    assert main(["compress", str(hf_vit_dir), "--recipe", "act", "--set", "act.targets=[nothing]",
                 "--out", str(nested), "--quiet"]) == 2
    assert not (tmp_path / "a").exists()
    assert main(["compress", str(hf_vit_dir), "--recipe", "act", "--out", str(nested), "--quiet",
                 "--latency-runs", "1"]) == 0
    assert (nested / "config.json").is_file()
