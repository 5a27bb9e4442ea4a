"""Hostile model files: generated config.json values and safetensors headers never escape as a traceback.

Each example damages a copy of a small real checkpoint (one config field set to an arbitrary JSON value, or the
safetensors header rewritten) and runs `cli.py inspect` on it in-process: the command either loads the model (exit 0)
or refuses it with one line on stderr and exit status 2; nothing else may happen (no other exception, no hang: the
model-size bound keeps a config with a huge layer count from building).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.cli import main

FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "image_size",
          "patch_size", "num_channels", "layer_norm_eps", "hidden_act", "model_type", "architectures", "id2label",
          "qkv_bias", "hidden_dropout_prob", "num_labels", "encoder_stride", "torch_dtype")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 1, -1, 2**31, 10**6, 1e-300, 1e300, "", "vit", "gelu", "ViTModel", "float16"])
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8)


def run_inspect(directory: Path, capsys) -> None:
    capsys.readouterr()
    status = main(["inspect", str(directory), "--recipe", "act"])
    err = capsys.readouterr().err
    assert status in (0, 2), err
    if status == 2:
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, hf_vit_dir):
    return tmp_path_factory.mktemp("fuzz"), hf_vit_dir


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_any_value_in_any_config_field_loads_or_is_one_line(field, value, workspace, capsys):
    root, source = workspace
    directory = root / "config"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(source, directory)
    config = json.loads((directory / "config.json").read_text())
    config[field] = value
    (directory / "config.json").write_text(json.dumps(config))
    run_inspect(directory, capsys)


def _header(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


entries = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "U8", "F8_E4M3", "X99", ""]) | st.integers(),
    "shape": st.lists(st.integers(-3, 2**40), max_size=4) | st.text(max_size=3),
    "data_offsets": st.lists(st.integers(-5, 2**40), max_size=3) | st.none(),
})


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(change=st.sampled_from(["entry", "drop", "rename", "length", "metadata"]), entry=entries,
       pick=st.integers(0, 10_000), number=st.integers(0, 2**64 - 1), text=st.text(max_size=8))
def test_any_safetensors_header_loads_or_is_one_line(change, entry, pick, number, text, workspace, capsys):
    root, source = workspace
    directory = root / "header"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(source, directory)
    weights = directory / "model.safetensors"
    header, payload = _header(weights)
    names = sorted(name for name in header if name != "__metadata__")
    name = names[pick % len(names)]
    if change == "entry":
        header[name] = {**header[name], **entry}
    elif change == "drop":
        del header[name]
    elif change == "rename":
        header[text or "x"] = header.pop(name)
    elif change == "metadata":
        header["__metadata__"] = {text: text} if pick % 2 else [number]
    encoded = json.dumps(header).encode()
    length = number if change == "length" else len(encoded)
    weights.write_bytes(struct.pack("<Q", length) + encoded + payload)
    run_inspect(directory, capsys)
