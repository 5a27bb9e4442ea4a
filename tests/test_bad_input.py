"""Bad input, across the CLI and the API: one clear line, exit status 2, no traceback, nothing written.

Each CLI case builds its broken input in a fresh directory, runs `cli.py` in-process from that directory, and checks
that the directory tree is byte-for-byte what it was before (no output, no staging directory, no created parents).
A few cases run as real subprocesses to check what a user's terminal shows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import compressor
from checkpoints_compressed import copy_compressed
from compressor.cli import main
from compressor.errors import CompressorError, RecipeError, SourceError, UnsupportedModelError
from compressor.recipe import Recipe
from file_trees import tree

REPO = Path(__file__).resolve().parents[1]
ACT = "description: x\ncompress_stage:\n  act:\n"
DISTILL_STEP = "distill_stage:\n  distill:\n    steps: 2\n"


def recipe_file(workdir: Path, text: str) -> str:
    path = workdir / "recipe.yaml"
    path.write_text(text)
    return str(path)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def broken_copy(source: Path, workdir: Path, name: str = "model") -> Path:
    return copy_compressed(source, workdir / name)


# --- the cases ------------------------------------------------------------------------------------------------------
# Each builder gets (workdir, fixtures) and returns the CLI arguments; fixtures holds the small checkpoints.

def _compress(source, *args, out="out"):
    return ["compress", str(source), *args, "--out", out, "--quiet", "--latency-runs", "1"]


def _gpt2(workdir):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16)).save_pretrained(
        workdir / "gpt2")
    return workdir / "gpt2"


def _vit_with_weights(workdir, f, damage):
    directory = workdir / "vit"
    shutil.copytree(f["vit"], directory)
    damage(directory / "model.safetensors")
    return directory


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\x01not a safetensors file" * 10)


def _with_config(workdir, source, change, name="model", raw=lambda text: text):
    """A copy of `source` whose config.json is `change(config)` (a dict, or any JSON value), its text then passed
    through `raw` (for what json.dumps cannot write)."""
    directory = copy_compressed(source, workdir / name)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(raw(json.dumps(change(config))))
    return directory


def _without_tensors(prefix: str):
    """A damage: drop the tensors whose names start with `prefix` (a checkpoint missing its classifier)."""
    def damage(path: Path) -> None:
        from safetensors.torch import load_file, save_file

        save_file({k: v for k, v in load_file(path).items() if not k.startswith(prefix)}, path,
                  metadata={"format": "pt"})
    return damage


def _with_extra_tensor(path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    save_file({**load_file(path), "vit.extra.weight": torch.zeros(2)}, path, metadata={"format": "pt"})


def _copy_source(workdir, source, name="model"):
    return Path(shutil.copytree(source, workdir / name))


def _timm_config(workdir, f, change):
    directory = _copy_source(workdir, f["timm_vit"])
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _compressed_with(workdir, f, edit):
    directory = broken_copy(f["compressed"], workdir)
    edit(directory)
    return directory


def _edit_recipe(directory: Path, change) -> None:
    data = yaml.safe_load((directory / "recipe.yaml").read_text())
    change(data["compress_stage"]["act"])
    (directory / "recipe.yaml").write_text(yaml.safe_dump(data))


def _calib_file(workdir, name, content: bytes):
    path = workdir / name
    path.write_bytes(content)
    return str(path)


def _image_bytes(fmt: str = "PNG", size: int = 32, seed: int = 0) -> bytes:
    """A real image file's bytes: random pixels, so that a JPEG's compressed data is long enough to cut."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A small real PNG whose header is patched to claim `width` x `height` pixels (its checksum fixed), as a
    decompression bomb presents itself: PIL refuses or warns from the header alone."""
    import struct
    import zlib

    data = bytearray(_image_bytes("PNG", 8))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])  # bit depth, colour, ... kept
    data[12:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)


def _cut(data: bytes, keep: float = 0.5) -> bytes:
    return data[:int(len(data) * keep)]


def _image_folder(workdir: Path, bad_name: str, bad: bytes, name: str = "images") -> str:
    """Two class folders of real images, plus one bad file `bad_name` in the second class."""
    for label, count in (("cat", 2), ("ship", 1)):
        (workdir / name / label).mkdir(parents=True)
        for index in range(count):
            (workdir / name / label / f"{index}.png").write_bytes(_image_bytes(seed=index))
    (workdir / name / "ship" / bad_name).write_bytes(bad)
    return str(workdir / name)


def _table(workdir: Path, images: list[bytes], labels: list, name: str = "table.parquet") -> str:
    """A parquet table as the Hub stores one: an `Image` column of bytes and a `label` column as given."""
    import datasets

    label_type = "string" if isinstance(labels[0], str) else "int64"
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value(label_type)})
    datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "label": labels},
                               features=features).to_parquet(workdir / name)
    return str(workdir / name)


def _evaluate(model, data):
    return ["evaluate", str(model), "--data", data, "--quiet"]


def _distill(f, data):
    return ["distill", str(f["compressed"]), "--data", data, "--out", "out", "--quiet"]


def _flow_laughs(levels: int = 7) -> str:
    """Nested aliases in one flow list, as a --set value could hold them."""
    text = '[&a0 [x, x, x, x, x, x, x, x, x]'
    for i in range(1, levels + 1):
        text += f", &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]"
    return text + "]"


def _nested_aliases(levels: int = 8) -> str:
    """"Billion laughs": each level is nine aliases of the one below, 9^9 strings from a few hundred bytes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


CASES = {
    # recipes
    "recipe with nested aliases (billion laughs)": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(
        w, "description: x\n" + _nested_aliases() + ACT + "    targets: *a8\n")), "expands to more than 100,000"),
    "override with nested aliases": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--set",
                                                            "act.targets=" + _flow_laughs()),
                                     "expands to more than 100,000"),
    "compressed model whose recipe.yaml has nested aliases": (lambda w, f: ["inspect", str(_compressed_with(
        w, f, lambda d: (d / "recipe.yaml").write_text(_nested_aliases() + (d / "recipe.yaml").read_text())))],
        "expands to more than 100,000"),
    "malformed yaml": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(w, "compress_stage:\n  act: [x\n")),
                       "not valid YAML"),
    "recipe is a list": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(w, "- act\n- rounds\n")),
                         "mapping"),
    "empty recipe": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(w, "")), "recipe.yaml"),
    "recipe not utf-8": (lambda w, f: _compress(f["vit"], "--recipe", _calib_file(w, "r.yaml", b"\xff\xfe\x00bad")),
                         "cannot read the recipe"),
    "recipe is a directory": (lambda w, f: _compress(f["vit"], "--recipe", str(w)), "is not a file"),
    "unknown built-in recipe": (lambda w, f: _compress(f["vit"], "--recipe", "actt"), "not a built-in recipe"),
    "python tag in yaml": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(
        w, ACT + "    rounds: !!python/object/apply:os.system ['echo owned']\n")), "recipe.yaml:4"),
    "unknown pass": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(w, "compress_stage:\n  actt: {}\n")),
                     "unknown pass 'actt'"),
    "unknown parameter": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(w, ACT + "    roundz: 3\n")),
                          "unknown act parameter 'roundz'"),
    "wrong type": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(w, ACT + "    rounds: many\n")),
                   "rounds expects an integer"),
    "out of range": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(w, ACT + "    rounds: 0\n")),
                     ">= 1"),
    "out of range override": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--set", "act.bucket_width=-1"),
                              "> 0"),
    "fidelity target above one": (lambda w, f: _compress(f["vit"], "--recipe", "act",
                                                         "--set", "act.fidelity_target=1.5"), "<= 1"),
    "bad choice override": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--set", "act.cluster=tokens"),
                            "one of queries, keys, both"),
    "override without value": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--set", "act.rounds"),
                               "expected <pass>.<param>=<value>"),
    "override of absent pass": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--set", "tome.r=4"),
                                "no pass 'tome'"),
    "invalid regex target": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--set", "act.targets=[re:(]"),
                             "not a valid regular expression"),
    # recipes against a model
    "target matches nothing": (lambda w, f: _compress(f["vit"], "--recipe", "act",
                                                      "--set", "act.targets=[encoder.nothing.*]"),
                               "matches no act site"),
    "ignore matches nothing": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--set", "act.ignore=[nothing]"),
                               "act.ignore: 'nothing' matches no act site"),
    "ignore removes everything": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--set", "act.ignore=[auto]"),
                                  "only meaningful in targets"),
    "pass without sites in this family": (lambda w, f: _compress(f["swin"], "--recipe", "act"),
                                          "finds no sites for act"),
    "conflicting passes": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(
        w, ACT + "    rounds: 4\nrefine_stage:\n  act:\n    targets: ['vit.layers.1.*']\n")),
                           "passes conflict: compress_stage.act and refine_stage.act"),
    "passes in an order that cannot work": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(
        w, ACT + "    rounds: 4\n  prune:\n")), "compress_stage.prune (line 5) runs after compress_stage.act (line 3)"),
    "calibration needed": (lambda w, f: _compress(f["vit"], "--recipe", "act-calibrated"), "--calib"),
    # refused before the model loads: the missing model would be the error otherwise
    "calibrated ACT without calibration, before loading": (lambda w, f: _compress(
        w / "no-such-model", "--recipe", "act-calibrated"), "act.fidelity_target needs calibration data"),
    "Taylor pruning without calibration, before loading": (lambda w, f: _compress(
        w / "no-such-model", "--recipe", "vit-max", "--no-distill"), "prune.importance=taylor needs calibration"),
    "data-aware tying without calibration, before loading": (lambda w, f: _compress(
        w / "no-such-model", "--recipe", "vit-pe", "--no-distill", "--set", "tied_weights.init=data_aware"),
        "data_aware needs calibration data"),
    # models
    "missing model": (lambda w, f: _compress(w / "no-such-model", "--recipe", "act"), "no such model directory"),
    "model is a file": (lambda w, f: _compress(recipe_file(w, "x"), "--recipe", "act"), "is a file"),
    "model without config": (lambda w, f: _compress(w, "--recipe", "act"), "no config.json"),
    "malformed hub id": (lambda w, f: _compress("not a model id!", "--recipe", "act"), "not a model id!"),
    "unknown hub id offline": (lambda w, f: _compress("some-org/no-such-model", "--recipe", "act"),
                               "HF_HUB_OFFLINE"),
    "unsupported architecture": (lambda w, f: _compress(_gpt2(w), "--recipe", "act"), "GPT2Model"),
    "corrupt safetensors": (lambda w, f: _compress(_vit_with_weights(w, f, _garbage), "--recipe", "act"),
                            "model.safetensors"),
    "truncated safetensors": (lambda w, f: _compress(_vit_with_weights(w, f, truncate), "--recipe", "act"),
                              "model.safetensors"),
    "config is a json list": (lambda w, f: _compress(_with_config(w, f["vit"], lambda c: [c]), "--recipe", "act"),
                              "not an object of settings"),
    "config with an impossible value": (lambda w, f: _compress(_with_config(
        w, f["vit"], lambda c: {**c, "num_attention_heads": 0}), "--recipe", "act"), "the file is damaged"),
    "config with a NaN epsilon": (lambda w, f: _compress(_with_config(
        w, f["vit"], lambda c: {**c, "layer_norm_eps": float("nan")}), "--recipe", "act"), "not a finite number"),
    "config with a number too large for a float": (lambda w, f: _compress(_with_config(
        w, f["vit"], lambda c: {**c, "layer_norm_eps": 12345.5}, raw=lambda text: text.replace("12345.5", "1e999")),
        "--recipe", "act"), "1e999, which is not a finite number"),
    "compressed model whose config holds Infinity": (lambda w, f: ["inspect", str(_with_config(
        w, f["compressed"], lambda c: {**c, "initializer_range": float("inf")}))], "Infinity"),
    "config value of the wrong type": (lambda w, f: _compress(_with_config(
        w, f["vit"], lambda c: {**c, "hidden_size": "big"}), "--recipe", "act"), "expected int"),
    # weights must describe the model exactly (nothing completed with random values, nothing ignored)
    "checkpoint missing its classifier": (lambda w, f: _compress(_vit_with_weights(
        w, f, _without_tensors("classifier.")), "--recipe", "act"), "missing classifier.bias, classifier.weight"),
    "checkpoint missing an encoder layer": (lambda w, f: _compress(_vit_with_weights(
        w, f, _without_tensors("vit.encoder.layer.1.")), "--recipe", "act"), "missing vit.layers.1."),
    "checkpoint with a tensor the model lacks": (lambda w, f: _compress(_vit_with_weights(
        w, f, _with_extra_tensor), "--recipe", "act"), "unexpected vit.extra.weight"),
    "config with far more layers than the weights": (lambda w, f: _compress(_with_config(
        w, f["vit"], lambda c: {**c, "num_hidden_layers": 100_000}), "--recipe", "act"),
        "describes a model larger than its weights"),
    "config of another family than the weights": (lambda w, f: _compress(_vit_with_weights(
        w, f, lambda path: shutil.copy(f["swin"] / "model.safetensors", path)), "--recipe", "act"),
        "from different models"),
    "architectures of another model_type": (lambda w, f: _compress(_with_config(
        w, f["vit"], lambda c: {**c, "architectures": ["DetrForObjectDetection"]}), "--recipe", "act"),
        "fix `model_type` or `architectures`"),
    "architectures naming no class": (lambda w, f: _compress(_with_config(
        w, f["vit"], lambda c: {**c, "architectures": ["ViTForEverything"]}), "--recipe", "act"),
        "which transformers does not have"),
    "timm config with far more blocks than the weights": (lambda w, f: _compress(_timm_config(
        w, f, lambda c: c.setdefault("model_args", {}).update(depth=100_000)), "--recipe", "act"),
        "describes a model larger than its weights"),
    "weights of another shape than the config": (lambda w, f: _compress(_with_config(
        w, f["vit"], lambda c: {**c, "hidden_size": 48}), "--recipe", "act"), "do not have the shapes"),
    "timm architecture that is not a name": (lambda w, f: _compress(_with_config(
        w, f["timm_vit"], lambda c: {**c, "architecture": 5}), "--recipe", "act"), "must be a timm model name"),
    # compressed models on reload
    "damaged compression_config": (lambda w, f: ["inspect", str(_with_config(
        w, f["compressed"], lambda c: {**c, "compression_config": {"format": "compressor"}}))],
                                   "compression_config is damaged"),
    "impossible config in a compressed model": (lambda w, f: ["inspect", str(_with_config(
        w, f["compressed"], lambda c: {**c, "num_attention_heads": 0}))], "the file is damaged"),
    "truncated compressed weights": (lambda w, f: ["inspect", str(_compressed_with(
        w, f, lambda d: truncate(d / "model.safetensors")))], "corrupt or truncated"),
    "recipe does not match the weights": (lambda w, f: ["inspect", str(_compressed_with(
        w, f, lambda d: _edit_recipe(d, lambda act: act.update(rounds=6))))], "does not match"),
    "recipe edited to cluster keys instead of queries": (lambda w, f: ["inspect", str(_compressed_with(
        w, f, lambda d: _edit_recipe(d, lambda act: act.update(cluster="keys"))))], "changed after the model was"),
    "recipe edited to another bucket width in its plan": (lambda w, f: ["inspect", str(_compressed_with(
        w, f, lambda d: _edit_recipe(d, lambda act: [site.update(bucket_width=1.5) for site in act["plan"].values()
                                                     if site.get("bucket_width")])))],
        "changed after the model was"),
    "recipe without the plan": (lambda w, f: ["inspect", str(_compressed_with(
        w, f, lambda d: _edit_recipe(d, lambda act: act.pop("plan"))))], "lacks the per-site plan"),
    "plan without a site the weights have": (lambda w, f: ["inspect", str(_compressed_with(
        w, f, lambda d: _edit_recipe(d, lambda act: act["plan"].pop(sorted(act["plan"])[0]))))],
                                             "weights and recipe.yaml come from different runs"),
    "plan for another architecture": (lambda w, f: ["inspect", str(_compressed_with(
        w, f, lambda d: _edit_recipe(d, lambda act: act.update(plan={"model.encoder.layers.0.self_attn":
                                                                     {"bucket_width": 2.0}}))))],
                                      "recipe was made for another architecture"),
    "compressed model without recipe": (lambda w, f: ["inspect", str(_compressed_with(
        w, f, lambda d: (d / "recipe.yaml").unlink()))], "no recipe.yaml"),
    "config that is not json": (lambda w, f: ["inspect", str(_compressed_with(
        w, f, lambda d: (d / "config.json").write_text("{not json")))], "not valid JSON"),
    # data
    "unreadable calibration data": (lambda w, f: _compress(f["vit"], "--recipe", "act-calibrated", "--calib",
                                                           _calib_file(w, "calib.parquet", b"PAR1 garbage")),
                                    "cannot read data"),
    "missing calibration data": (lambda w, f: _compress(f["vit"], "--recipe", "act-calibrated",
                                                        "--calib", "./nothing.parquet"), "does not exist"),
    "calibration folder without images": (lambda w, f: _compress(f["vit"], "--recipe", "act-calibrated",
                                                                 "--calib", str(w)), "contains no images"),
    "text calibration for an image model": (lambda w, f: _compress(f["vit"], "--recipe", "act-calibrated",
                                                                   "--calib", _calib_file(w, "t.txt", b"words\n")),
                                            "takes images"),
    # data: every image checked as it is read, every label a class of the model
    "zero-byte image in an evaluation folder": (lambda w, f: _evaluate(f["vit"], _image_folder(
        w, "empty.jpg", b"")), "ship/empty.jpg is not a readable image"),
    "random bytes named .jpg in a calibration folder": (lambda w, f: _compress(
        f["vit"], "--recipe", "act-calibrated", "--calib", _image_folder(w, "noise.jpg", os.urandom(4096))),
        "ship/noise.jpg is not a readable image"),
    "truncated JPEG in an evaluation folder": (lambda w, f: _evaluate(f["vit"], _image_folder(
        w, "cut.jpg", _cut(_image_bytes("JPEG", 64)))), "ship/cut.jpg is a truncated JPEG"),
    "truncated JPEG in training data": (lambda w, f: _distill(f, _image_folder(w, "cut.jpg", _cut(_image_bytes(
        "JPEG", 64)))), "ship/cut.jpg is a truncated JPEG"),
    "truncated PNG in training data": (lambda w, f: _distill(f, _image_folder(w, "cut.png", _cut(_image_bytes()))),
                                       "ship/cut.png is not a readable image"),
    "decompression bomb in an evaluation folder": (lambda w, f: _evaluate(f["vit"], _image_folder(
        w, "bomb.png", _png_claiming(100_000, 100_000))), "ship/bomb.png is too large to decode"),
    "image just over the pixel limit as calibration data": (lambda w, f: _compress(
        f["vit"], "--recipe", "act-calibrated", "--calib", _calib_file(w, "big.png", _png_claiming(10_000, 10_000))),
        "big.png is too large to decode"),
    "decompression bomb in a table's image column": (lambda w, f: _evaluate(f["vit"], _table(
        w, [_image_bytes(), _png_claiming(100_000, 100_000)], [0, 1])), "table.parquet (column image) is too large to decode"),
    "undecodable image in calibration table": (lambda w, f: _compress(
        f["vit"], "--recipe", "act-calibrated", "--calib", _table(w, [_image_bytes(), b"not an image"], [0, 1])),
        "row 1 of"),
    "zero-byte image in compress evaluation data": (lambda w, f: _compress(
        f["vit"], "--recipe", "act", "--eval-data", _image_folder(w, "empty.png", b"")),
        "ship/empty.png is not a readable image"),
    "images outside any class folder": (lambda w, f: (w.joinpath("loose").mkdir(), w.joinpath(
        "loose", "a.png").write_bytes(_image_bytes()), _evaluate(f["vit"], str(w / "loose")))[2],
        "outside a class folder"),
    "text labels in an evaluation table": (lambda w, f: _evaluate(f["vit"], _table(
        w, [_image_bytes(), _image_bytes()], ["cat", "ship"])), "has the label 'cat', not a class index"),
    "text labels in training data": (lambda w, f: _distill(f, _table(w, [_image_bytes()] * 2, ["cat", "ship"])),
                                     "table.parquet (column label) has the label 'cat'"),
    "labels outside the model's classes in evaluation data": (lambda w, f: _evaluate(f["vit"], _table(
        w, [_image_bytes()] * 3, [0, 10, 3])), "table.parquet (column label) has the label 10, outside"),
    "labels outside the model's classes in training data": (lambda w, f: _distill(f, _table(
        w, [_image_bytes()] * 2, [-1, 2])), "has the label -1, outside the 10 classes"),
    # output and options
    "output exists": (lambda w, f: (w.joinpath("out").mkdir(), _compress(f["vit"], "--recipe", "act"))[1],
                      "--overwrite"),
    "output is a file": (lambda w, f: (w.joinpath("out").write_text("x"), _compress(
        f["vit"], "--recipe", "act", "--overwrite"))[1], "not a directory"),
    "output parent is a file": (lambda w, f: (w.joinpath("parent").write_text("x"), [
        "compress", str(f["vit"]), "--recipe", "act", "--out", "parent/out", "--quiet"])[1], "is a file"),
    "bad input size": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--input-size", "big"), "HEIGHTxWIDTH"),
    "input size that would allocate gigabytes": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--input-size",
                                                                         "100000x100000"), "from 1 to 8,192"),
    "seed beyond 32 bits": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--seed", str(2**32)),
                            "from 0 to 4,294,967,295"),
    "negative seed": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--seed=-1"), "from 0 to 4,294,967,295"),
    "sweep seed beyond 32 bits": (lambda w, f: ["sweep", str(f["vit"]), "--recipe", "act", "--grid", "act.rounds=4",
                                                "--data", "d.parquet", "--seed", str(2**40)], "from 0 to 4,294,967,295"),
    "output under /proc": (lambda w, f: _compress(f["vit"], "--recipe", "act", out="/proc/compressor-out"),
                           "cannot write /proc/compressor-out"),
    "output through a symbolic link loop": (lambda w, f: (
        w.joinpath("a").symlink_to("b"), w.joinpath("b").symlink_to("a"),
        _compress(f["vit"], "--recipe", "act", out="a/out"))[2], "link loop"),
    "output is a dangling symbolic link": (lambda w, f: (
        w.joinpath("out").symlink_to("nowhere"), _compress(f["vit"], "--recipe", "act"))[1], "broken symbolic link"),
    # --overwrite replaces only an earlier output of this toolkit
    "overwrite of the current directory": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--overwrite",
                                                                   out="."), "it is the current directory"),
    "overwrite of a parent of the current directory": (lambda w, f: _compress(
        f["vit"], "--recipe", "act", "--overwrite", out=".."),
        "holding the current directory"),
    "overwrite of the root directory": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--overwrite",
                                                                out="/"), "root or a home directory"),
    "overwrite of the source model": (lambda w, f: ["compress", str(_copy_source(w, f["vit"])), "--recipe", "act",
                                                    "--out", "model", "--overwrite", "--quiet"],
                                      "holds the source model"),
    "overwrite of a directory holding the source model": (lambda w, f: [
        "compress", str(_copy_source(w, f["vit"], "models/vit")), "--recipe", "act", "--out", "models",
        "--overwrite", "--quiet"], "holds the source model"),
    "overwrite of a compressed source model": (lambda w, f: [
        "compress", str(broken_copy(f["compressed"], w)), "--recipe", "act", "--out", "model", "--overwrite",
        "--quiet"], "holds the source model"),
    "overwrite of a directory the toolkit did not write": (lambda w, f: (
        w.joinpath("out").mkdir(), w.joinpath("out", "thesis.tex").write_text("years of work"),
        _compress(f["vit"], "--recipe", "act", "--overwrite"))[2], "not an earlier output of this toolkit"),
    "overwrite of a training directory the toolkit did not write": (lambda w, f: (
        w.joinpath("out.distill").mkdir(), w.joinpath("out.distill", "notes.txt").write_text("mine"),
        _compress(f["vit"], "--recipe", recipe_file(w, ACT + DISTILL_STEP), "--data", "train.parquet",
                  "--overwrite"))[2], "not an earlier output of this toolkit"),
    "sweep over a directory the toolkit did not write": (lambda w, f: (
        w.joinpath("out").mkdir(), w.joinpath("out", "data.csv").write_text("1,2"),
        ["sweep", str(f["vit"]), "--recipe", "act", "--grid", "act.rounds=4", "--data", "d.parquet", "--out",
         "out", "--overwrite", "--quiet"])[2], "not an earlier output of this toolkit"),
    # the distill step of a recipe
    "distill step on an undecodable image, before compressing": (lambda w, f: _compress(
        f["vit"], "--recipe", recipe_file(w, ACT + DISTILL_STEP), "--data", _image_folder(w, "bad.png", b"")),
        "bad.png"),
    "distill step without data": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(
        w, ACT + DISTILL_STEP)), "needs training data"),
    "distill step before a pass": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(
        w, "description: x\ndistill_stage:\n  distill:\ncompress_stage:\n  act:\n")), "must be the last step"),
    "distill step twice": (lambda w, f: _compress(f["vit"], "--recipe", recipe_file(
        w, ACT + DISTILL_STEP + "again_stage:\n  distill:\n")), "may distill once"),
    "training data for a recipe without a distill step": (lambda w, f: _compress(
        f["vit"], "--recipe", "act", "--data", "train.parquet"), "has none"),
    "an earlier training run in the way": (lambda w, f: (w.joinpath("out.distill").mkdir(), _compress(
        f["vit"], "--recipe", recipe_file(w, ACT + DISTILL_STEP), "--data", "train.parquet"))[1],
                                           "--resume"),
    "zero calibration samples": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--calib-samples", "0"),
                                 "at least 1"),
    # the before/after task metric of compress --eval-data
    "evaluation data that does not exist": (lambda w, f: _compress(
        f["vit"], "--recipe", "act", "--eval-data", "missing.parquet"), "does not exist"),
    "text evaluation data for an image model": (lambda w, f: (w.joinpath("p.txt").write_text("one.\n\ntwo."),
                                                             _compress(f["vit"], "--recipe", "act", "--eval-data",
                                                                       "p.txt"))[1], "holds text but"),
    "zero evaluation examples": (lambda w, f: _compress(f["vit"], "--recipe", "act", "--eval-data",
                                                        "test.parquet", "--eval-limit", "0"), "at least 1"),
    "a setting that cannot apply to the sites": (lambda w, f: _compress(
        f["vit"], "--recipe", "vit-pe", "--no-distill", "--set", "tied_weights.share=stage", "--set",
        "tied_weights.share_middle=true"),
        "no middle conv to share (only bottleneck blocks do); set tied_weights.share_middle=false"),
}


@pytest.fixture
def fixtures(hf_vit_dir, hf_swin_dir, timm_vit_dir, compressed_vit_dir):
    return {"vit": hf_vit_dir, "swin": hf_swin_dir, "timm_vit": timm_vit_dir, "compressed": compressed_vit_dir}


def assert_one_line_error(status: int, err: str, expected: str) -> None:
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert expected in err, err


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_cli_input_is_one_line_exit_2_and_writes_nothing(case, fixtures, tmp_path, monkeypatch, capsys):
    build, expected = CASES[case]
    workdir = tmp_path / "work"
    workdir.mkdir()
    argv = build(workdir, fixtures)
    capsys.readouterr()  # what building the broken input printed (save_pretrained's progress bar) is not ours
    monkeypatch.chdir(workdir)
    before = tree(workdir)
    status = main(argv)
    assert_one_line_error(status, capsys.readouterr().err, expected)
    assert tree(workdir) == before


def test_the_suite_covers_at_least_25_kinds_of_mistake():
    assert len(CASES) >= 25


def test_bad_input_in_a_real_process_shows_one_line_and_no_traceback(fixtures, tmp_path):
    """A truncated safetensors file once escaped as a traceback; in a real process the user sees one line."""
    build, expected = CASES["truncated safetensors"]
    argv = build(tmp_path, fixtures)
    before = tree(tmp_path)
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(done.returncode, done.stderr, expected)
    assert done.stdout == ""
    assert tree(tmp_path) == before


# --- the API raises the same one-line errors --------------------------------------------------------------------

def _one_line(raised) -> str:
    message = str(raised.value)
    assert message and "\n" not in message
    return message


def test_api_compress_rejects_a_conflicting_recipe_before_loading_data(hf_vit_dir):
    recipe = Recipe.from_dict({"description": "x", "a_stage": {"act": {}}, "b_stage": {"act": {}}})
    with pytest.raises(RecipeError) as raised:
        compressor.compress(hf_vit_dir, recipe, calib="/no/such/data.parquet", progress=False)
    assert "conflict" in _one_line(raised)


def test_api_load_of_a_truncated_compressed_model_is_a_source_error(compressed_vit_dir, tmp_path):
    directory = copy_compressed(compressed_vit_dir, tmp_path / "m")
    truncate(directory / "model.safetensors", 0.9)
    with pytest.raises(SourceError) as raised:
        compressor.load(directory)
    assert "truncated" in _one_line(raised)


def test_api_load_of_an_unsupported_model_is_an_unsupported_model_error(tmp_path):
    with pytest.raises(UnsupportedModelError) as raised:
        compressor.load(_gpt2(tmp_path))
    assert "supported:" in _one_line(raised)


def test_api_save_refuses_an_existing_output_and_leaves_it_alone(compressed_vit_dir, hf_vit_dir, tmp_path):
    result = compressor.compress(hf_vit_dir, "act", overrides=["act.rounds=4"], progress=False, latency_runs=1)
    out = copy_compressed(compressed_vit_dir, tmp_path / "out")
    before = tree(tmp_path)
    with pytest.raises(CompressorError) as raised:
        compressor.save(result, out)
    assert "--overwrite" in _one_line(raised)
    assert tree(tmp_path) == before


def test_api_recipe_from_dict_rejects_a_non_mapping():
    with pytest.raises(RecipeError) as raised:
        Recipe.from_dict(["act"])
    assert "mapping" in _one_line(raised)


def test_api_save_never_replaces_the_source_model(hf_vit_dir, tmp_path):
    source = Path(shutil.copytree(hf_vit_dir, tmp_path / "vit"))
    result = compressor.compress(source, "act", overrides=["act.rounds=4"], progress=False, latency_runs=1)
    before = tree(tmp_path)
    with pytest.raises(CompressorError) as raised:
        compressor.save(result, source, overwrite=True)
    assert "holds the source model" in _one_line(raised)
    assert tree(tmp_path) == before


def test_overwrite_never_replaces_a_home_directory_even_one_that_looks_like_an_output(hf_vit_dir, tmp_path,
                                                                                      monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text('{"compression_config": {}}')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    status = main(["compress", str(hf_vit_dir), "--recipe", "act", "--out", str(home), "--overwrite", "--quiet"])
    assert_one_line_error(status, capsys.readouterr().err, "root or a home directory")
    assert tree(tmp_path) == before


SECRET = "hf_SECRETVALUE123"


@pytest.mark.parametrize("pointed_at", ["recipe: a text file", "recipe: a JSON file", "recipe: a YAML list",
                                        "model: a JSON file as config.json"])
def test_an_error_never_quotes_the_contents_of_an_unrelated_file(pointed_at, fixtures, tmp_path, monkeypatch,
                                                                 capsys):
    """Pointed by mistake at a credentials file, the toolkit says what the file is not, without printing it."""
    monkeypatch.chdir(tmp_path)
    secret_file = {"recipe: a text file": ("notes.txt", f"token={SECRET}\nuser: me\n"),
                   "recipe: a JSON file": ("keys.json", json.dumps({"api_key": SECRET, SECRET: 1})),
                   "recipe: a YAML list": ("keys.yaml", f"- {SECRET}\n"),
                   "model: a JSON file as config.json": ("model/config.json",
                                                         json.dumps({"model_type": SECRET, "token": SECRET}))}
    name, text = secret_file[pointed_at]
    (tmp_path / name).parent.mkdir(exist_ok=True)
    (tmp_path / name).write_text(text)
    argv = (_compress(f"{tmp_path}/model", "--recipe", "act") if name.startswith("model/")
            else _compress(fixtures["vit"], "--recipe", str(tmp_path / name)))
    status = main(argv)
    err = capsys.readouterr().err
    assert_one_line_error(status, err, "")
    assert SECRET not in err and "SECRETVALUE" not in err, err


@pytest.mark.parametrize("seed", [-1, 2**32, True])
def test_api_compress_refuses_a_seed_outside_32_bits_before_loading(seed):
    with pytest.raises(CompressorError) as raised:
        compressor.compress("/no/such/model", "act", seed=seed, progress=False)
    assert "0 to 4,294,967,295" in _one_line(raised)
