"""The CIFAR ResNet family: the real akamaster checkpoints load, compute what the published architecture computes,
classify real CIFAR-10 images, and round-trip through save_pretrained and the toolkit's loaders."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from compressor.cli import main
from compressor.errors import SourceError
from compressor.sources import load_source


def _batch_norm(state, name, x):
    return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                        state[f"{name}.bias"], training=False, eps=1e-5)


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The architecture as ../shared/README.md describes it, written with functional ops on the raw weights."""
    out = F.relu(_batch_norm(state, "bn1", F.conv2d(x, state["conv1.weight"], padding=1)))
    for stage in (1, 2, 3):
        blocks = len({key.split(".")[1] for key in state if key.startswith(f"layer{stage}.")})
        for index in range(blocks):
            name = f"layer{stage}.{index}"
            stride = 2 if stage > 1 and index == 0 else 1
            hidden = F.relu(_batch_norm(state, f"{name}.bn1",
                                        F.conv2d(out, state[f"{name}.conv1.weight"], stride=stride, padding=1)))
            hidden = _batch_norm(state, f"{name}.bn2", F.conv2d(hidden, state[f"{name}.conv2.weight"], padding=1))
            shortcut = out
            if hidden.shape != out.shape:
                pad = (hidden.shape[1] - out.shape[1]) // 2
                shortcut = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
            out = F.relu(hidden + shortcut)
    return F.linear(out.mean(dim=(2, 3)), state["linear.weight"], state["linear.bias"])


def test_model_computes_the_published_architecture_on_the_real_weights(resnet56_checkpoint):
    from safetensors.torch import load_file

    loaded = load_source(resnet56_checkpoint)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = loaded.model(pixel_values=x).logits
    expected = reference_forward(load_file(str(resnet56_checkpoint)), x)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert loaded.model.config.depth == 56 and loaded.adapter.family == "cifar-resnet"


def test_real_resnet20_classifies_real_cifar10_images(resnet20_checkpoint, cifar10_test_parquet):
    import datasets

    rows = datasets.load_dataset("parquet", data_files=str(cifar10_test_parquet), split="train").select(range(200))
    loaded = load_source(resnet20_checkpoint)
    with torch.no_grad():
        logits = loaded.model(**loaded.adapter.prepare_inputs(rows["img"])).logits
    accuracy = (logits.argmax(-1) == torch.tensor(rows["label"])).float().mean().item()
    assert accuracy > 0.7  # chance is 0.1; the shared README measured 0.81 on all 10,000


def test_adapter_lists_basic_blocks_with_their_convs_and_norms(resnet20_checkpoint):
    adapter = load_source(resnet20_checkpoint).adapter
    blocks = adapter.blocks()
    assert [b.stack for b in blocks] == ["stage0"] * 3 + ["stage1"] * 3 + ["stage2"] * 3
    assert blocks[3].convs == ("layer2.0.conv1", "layer2.0.conv2")
    assert blocks[3].norms == ("layer2.0.bn1", "layer2.0.bn2")
    for block in blocks:
        for conv, norm in zip(block.convs, block.norms):
            assert adapter.module(conv).out_channels == adapter.module(norm).num_features
    assert adapter.attention_sites() == [] and adapter.ffn_sites() == []


def test_converted_directory_reloads_with_identical_outputs(resnet20_checkpoint, resnet20_dir):
    from transformers import AutoModelForImageClassification

    original = load_source(resnet20_checkpoint)
    reloaded = load_source(resnet20_dir)
    x = original.adapter.example_inputs(batch_size=2)
    with torch.no_grad():
        expected = original.model(**x).logits
        assert torch.equal(reloaded.model(**x).logits, expected)
        # plain transformers, once the toolkit registered the architecture
        plain = AutoModelForImageClassification.from_pretrained(resnet20_dir).eval()
        assert torch.equal(plain(**x).logits, expected)
    assert list(reloaded.adapter.processor.image_mean) == [0.485, 0.456, 0.406]


def test_hidden_states_are_the_stem_and_each_stage(resnet20_checkpoint):
    model = load_source(resnet20_checkpoint).model
    with torch.no_grad():
        outputs = model(pixel_values=torch.zeros(1, 3, 32, 32), output_hidden_states=True)
    assert [tuple(h.shape[1:]) for h in outputs.hidden_states] == [(16, 32, 32), (16, 32, 32), (32, 16, 16),
                                                                   (64, 8, 8)]


def test_other_checkpoint_files_fail_with_one_line(vit_cifar10_dir, tmp_path, capsys):
    assert main(["inspect", str(vit_cifar10_dir / "model.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "not a CIFAR ResNet checkpoint" in err and err.count("\n") == 1
    broken = tmp_path / "broken.th"
    broken.write_bytes(b"not a checkpoint")
    try:
        load_source(broken)
    except SourceError as error:
        assert "not a readable PyTorch checkpoint" in str(error)
    else:
        raise AssertionError("a corrupt checkpoint loaded")


def test_inspect_reports_the_real_resnet56(resnet56_checkpoint, capsys):
    assert main(["inspect", str(resnet56_checkpoint)]) == 0
    assert "params 0.853 M" in capsys.readouterr().out
