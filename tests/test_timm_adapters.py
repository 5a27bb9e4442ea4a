"""timm adapters and loading: tiny real architectures in timm's Hub layout, real preprocessing on a real image."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from checkpoints_timm import TINY_TIMM_MODELS, create_tiny_timm_model, write_timm_checkpoint
from compressor.errors import CompressorError, SourceError, UnsupportedModelError
from compressor.loaders.timm_models import build_timm_model, load_processor, load_timm_model, timm_config_dict
from compressor.models import AttentionKernel, AttentionSite, adapter_for
from compressor.models.patches.timm import KERNEL_ATTENTION
from compressor.models.timm_resnet import TimmResNetAdapter
from compressor.models.timm_swin import TimmSwinAdapter
from compressor.models.timm_vit import TimmViTAdapter
from probes import input_of
from shared_assets import shared

ADAPTER_BY_CHECKPOINT = {"timm_vit_dir": TimmViTAdapter, "timm_deit_dir": TimmViTAdapter,
                         "timm_swin_dir": TimmSwinAdapter, "timm_resnet_dir": TimmResNetAdapter}
#: small inputs keep the ResNet-50-wide model fast; transformers need their fixed native size
EXAMPLE_SIZE = {"timm_resnet_dir": (64, 64)}
NUM_CLASSES = 10


def load_adapted(directory):
    model, data_config = load_timm_model(str(directory))
    return model, adapter_for(model, data_config)


class CountingExactKernel(AttentionKernel):
    """softmax(q kᵀ · scale + mask) v by SDPA, counting its calls; the buffer checks where kernel state is saved."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.register_buffer("marker", torch.zeros(1))

    def forward(self, query, key, value, attention_mask, scale):
        self.calls += 1
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)


@pytest.mark.parametrize("checkpoint", sorted(ADAPTER_BY_CHECKPOINT))
def test_each_family_loads_from_its_local_directory_with_its_adapter(checkpoint, request):
    model, adapter = load_adapted(request.getfixturevalue(checkpoint))

    assert type(adapter) is ADAPTER_BY_CHECKPOINT[checkpoint]
    assert adapter.library == "timm" and adapter.task == "image-classification"
    assert not model.training
    architecture, kwargs = TINY_TIMM_MODELS[checkpoint]
    assert model.pretrained_cfg["architecture"] == architecture
    assert model.num_classes == kwargs["num_classes"]


@pytest.mark.parametrize("checkpoint", ["timm_vit_dir", "timm_deit_dir"])
def test_vit_sites_point_at_timm_attention_and_mlp_modules(checkpoint, request):
    from timm.layers import Attention, Mlp

    model, adapter = load_adapted(request.getfixturevalue(checkpoint))
    depth, heads, width = 2, 2, 32

    sites = adapter.attention_sites()
    assert [site.name for site in sites] == [f"blocks.{i}.attn" for i in range(depth)]
    for layer, site in enumerate(sites):
        assert type(adapter.module(site.name)) is Attention
        assert (site.stack, site.layer, site.kind, site.scope) == ("encoder", layer, "self", "global")
        assert (site.num_heads, site.head_dim) == (heads, width // heads)
        assert site.fused_qkv and adapter.module(site.query).out_features == 3 * width
        assert adapter.module(site.output).in_features == width
    for site in adapter.ffn_sites():
        assert isinstance(adapter.module(site.name), Mlp)
        assert adapter.module(site.fc1).out_features == 4 * width
        assert adapter.module(site.fc2).out_features == width
        assert isinstance(adapter.module(site.activation), nn.GELU)
    assert [(block.attention, block.ffn) for block in adapter.blocks()] == [
        (f"blocks.{i}.attn", f"blocks.{i}.mlp") for i in range(depth)]


@pytest.mark.parametrize("architecture, kwargs, prefix", [
    ("vit_tiny_patch16_224", {}, ("cls",)),
    ("deit_tiny_distilled_patch16_224", {}, ("cls", "distillation")),
    ("vit_tiny_patch16_224", {"reg_tokens": 2}, ("cls", "register", "register")),
])
def test_vit_token_layout_matches_the_tokens_the_first_block_sees(architecture, kwargs, prefix):
    model = create_tiny_timm_model(architecture, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                   **kwargs)
    adapter = adapter_for(model)
    layout = adapter.token_layout()

    tokens = input_of(model.blocks[0], model, adapter.example_inputs())
    assert layout.prefix_tokens == prefix
    assert layout.grid == (4, 4)
    assert layout.sequence_length == tokens.shape[1] == len(prefix) + 16


def test_swin_sites_are_window_attention_with_one_stack_per_stage(timm_swin_dir):
    from timm.models.swin_transformer import WindowAttention

    model, adapter = load_adapted(timm_swin_dir)

    sites = adapter.attention_sites()
    assert [(site.stack, site.layer, site.num_heads, site.head_dim) for site in sites] == [
        ("stage0", 0, 2, 8), ("stage0", 1, 2, 8), ("stage1", 0, 4, 8), ("stage1", 1, 4, 8)]
    assert all(type(adapter.module(site.name)) is WindowAttention and site.scope == "window" for site in sites)
    assert [site.fc2 for site in adapter.ffn_sites()][-1] == "layers.1.blocks.1.mlp.fc2"
    layout = adapter.token_layout()
    tokens = input_of(model.layers[0].blocks[0], model, adapter.example_inputs())
    assert (layout.prefix_tokens, layout.window, layout.grid) == ((), (7, 7), (14, 14))
    assert layout.sequence_length == tokens.shape[1] * tokens.shape[2] == 196


def test_resnet_has_only_blocks_naming_their_main_path_convolutions(timm_resnet_dir):
    _, bottleneck = load_adapted(timm_resnet_dir)
    basic = adapter_for(create_tiny_timm_model("resnet18", layers=(1, 1, 1, 1)))

    assert bottleneck.attention_sites() == [] and bottleneck.ffn_sites() == []
    assert [(b.name, b.stack, b.kind) for b in bottleneck.blocks()] == [
        (f"layer{i + 1}.0", f"stage{i}", "bottleneck") for i in range(4)]
    assert [block.kind for block in basic.blocks()] == ["basic"] * 4
    for adapter, convs_per_block in ((bottleneck, 3), (basic, 2)):
        for block in adapter.blocks():
            assert len(block.convs) == convs_per_block
            assert all(isinstance(adapter.module(conv), nn.Conv2d) for conv in block.convs)
    assert bottleneck.token_layout().sequence_length is None


@pytest.mark.parametrize("checkpoint", sorted(ADAPTER_BY_CHECKPOINT))
def test_example_inputs_are_deterministic_and_give_batch_by_class_logits(checkpoint, request):
    model, adapter = load_adapted(request.getfixturevalue(checkpoint))
    size = EXAMPLE_SIZE.get(checkpoint)

    inputs = adapter.example_inputs(batch_size=3, size=size, seed=1)
    assert torch.equal(inputs["x"], adapter.example_inputs(batch_size=3, size=size, seed=1)["x"])
    assert not torch.equal(inputs["x"], adapter.example_inputs(batch_size=3, size=size, seed=2)["x"])
    with torch.no_grad():
        output = adapter.primary_output(model(**inputs), inputs)
    assert output.shape == (3, NUM_CLASSES)


@pytest.mark.parametrize("checkpoint", ["timm_vit_dir", "timm_deit_dir"])
def test_exact_kernel_is_called_and_leaves_outputs_unchanged(checkpoint, request):
    from timm.layers import Attention

    model, adapter = load_adapted(request.getfixturevalue(checkpoint))
    inputs = adapter.example_inputs(batch_size=2)
    with torch.no_grad():
        reference = model(**inputs)
    kernels = {}

    for site in adapter.attention_sites():
        kernels[site.name] = CountingExactKernel()
        adapter.install_attention_kernel(site, kernels[site.name])
    with torch.no_grad():
        routed = model(**inputs)

    assert (routed - reference).abs().max().item() <= 1e-5
    assert [kernel.calls for kernel in kernels.values()] == [1] * len(kernels)
    kernel_class = KERNEL_ATTENTION.patched_class(Attention)  # made once, shared by every Attention module
    assert kernel_class is KERNEL_ATTENTION.patched_class(Attention)
    assert all(type(block.attn) is kernel_class for block in model.blocks)
    assert "blocks.1.attn.attention_kernel.marker" in model.state_dict()


def test_kernel_receives_the_boolean_and_causal_attention_masks(timm_vit_dir):
    model, adapter = load_adapted(timm_vit_dir)
    inputs = adapter.example_inputs(batch_size=2)
    tokens = adapter.token_layout().sequence_length
    mask = torch.ones(2, 1, tokens, tokens, dtype=torch.bool)
    mask[..., -5:] = False  # the last five patches are hidden from every query
    with torch.no_grad():
        unmasked = model(**inputs)
        reference = {"mask": model(**inputs, attn_mask=mask), "causal": model(**inputs, is_causal=True)}

    for site in adapter.attention_sites():
        adapter.install_attention_kernel(site, CountingExactKernel())
    with torch.no_grad():
        routed = {"mask": model(**inputs, attn_mask=mask), "causal": model(**inputs, is_causal=True)}

    for kind in ("mask", "causal"):
        assert not torch.allclose(reference[kind], unmasked, atol=1e-4)
        assert (routed[kind] - reference[kind]).abs().max().item() <= 1e-5


class UniformKernel(AttentionKernel):
    """Attends evenly to every key: installing it visibly changes the outputs."""

    def forward(self, query, key, value, attention_mask, scale):
        return value.mean(dim=-2, keepdim=True).expand(*query.shape[:-1], value.shape[-1])


@pytest.mark.parametrize("checkpoint", ["timm_vit_dir", "timm_deit_dir"])
def test_removing_kernels_restores_the_original_outputs(checkpoint, request):
    model, adapter = load_adapted(request.getfixturevalue(checkpoint))
    inputs = adapter.example_inputs(batch_size=2)
    original_keys = set(model.state_dict())
    with torch.no_grad():
        reference = model(**inputs)

    for site in adapter.attention_sites():
        adapter.install_attention_kernel(site, UniformKernel())
    with torch.no_grad():
        routed = model(**inputs)
    for site in adapter.attention_sites():
        adapter.remove_attention_kernel(site)
    with torch.no_grad():
        restored = model(**inputs)

    assert (routed - reference).abs().max().item() > 1e-4  # the kernel really ran (100× the tolerance below)
    assert (restored - reference).abs().max().item() <= 1e-6
    assert all("attention_kernel" not in adapter.module(site.name)._modules for site in adapter.attention_sites())
    assert set(model.state_dict()) == original_keys


def test_window_attention_and_resnet_refuse_kernels_with_one_clear_line(timm_swin_dir, timm_resnet_dir):
    swin, swin_adapter = load_adapted(timm_swin_dir)
    site = swin_adapter.attention_sites()[0]
    original_class = type(swin_adapter.module(site.name))

    with pytest.raises(CompressorError, match="WindowAttention") as refused:
        swin_adapter.install_attention_kernel(site, CountingExactKernel())
    assert "\n" not in str(refused.value)
    assert type(swin_adapter.module(site.name)) is original_class
    assert not hasattr(swin_adapter.module(site.name), "attention_kernel")

    _, resnet_adapter = load_adapted(timm_resnet_dir)
    conv_as_site = AttentionSite(name="layer1.0.conv1", stack="stage0", layer=0, kind="self", scope="global",
                                 num_heads=1, head_dim=64, query="", key="", value="", output="")
    with pytest.raises(CompressorError, match="Conv2d"):
        resnet_adapter.install_attention_kernel(conv_as_site, CountingExactKernel())


@pytest.mark.parametrize("checkpoint, normalised_range", [("timm_vit_dir", (-1.0, 1.0)),
                                                           ("timm_resnet_dir", (-2.2, 2.7))])
def test_prepare_inputs_runs_timm_eval_transform_on_a_real_image(checkpoint, normalised_range, request):
    model, adapter = load_adapted(request.getfixturevalue(checkpoint))
    image = Image.open(shared("coco-fixture/000000039769.png"))

    inputs = adapter.prepare_inputs([image, image.rotate(90)])

    _, height, width = adapter.data_config()["input_size"]
    assert inputs["x"].shape == (2, 3, height, width)
    low, high = normalised_range
    assert low - 1e-4 <= inputs["x"].min() < 0 < inputs["x"].max() <= high + 1e-4
    assert not torch.equal(inputs["x"][0], inputs["x"][1])
    without_processor = type(adapter)(model)  # resolves the same data config from the model itself
    assert torch.equal(without_processor.prepare_inputs([image])["x"][0], inputs["x"][0])
    with torch.no_grad():
        assert torch.isfinite(model(**inputs)).all()


@pytest.mark.parametrize("source", ["timm/vit_tiny_patch16_224.augreg_in21k", "hf-hub:timm/resnet50.a1_in1k"])
def test_hub_name_while_offline_is_a_one_line_source_error(source):
    with pytest.raises(SourceError) as failed:
        load_timm_model(source)
    message = str(failed.value)
    assert "\n" not in message
    assert source.removeprefix("hf-hub:") in message and "HF_HUB_OFFLINE" in message


@pytest.mark.parametrize("source", ["timm/tiny_vit_test", "hf-hub:timm/tiny_vit_test@main"])
def test_hub_name_loads_from_the_hub_cache_while_offline(source, timm_vit_dir, tmp_path, monkeypatch):
    """No Hub server runs here: the files sit in huggingface_hub's documented cache layout (what a download
    leaves behind), and the real hf_hub_download finds them there, as it does for users with HF_HUB_OFFLINE=1."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = tmp_path / "models--timm--tiny_vit_test"
    snapshot = repo_cache / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((timm_vit_dir / name).read_bytes())
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    model, data_config = load_timm_model(source)

    reference, _ = load_timm_model(str(timm_vit_dir))
    assert model.pretrained_cfg["hf_hub_id"] == source.removeprefix("hf-hub:")
    assert data_config["input_size"] == (3, 32, 32)
    inputs = adapter_for(model).example_inputs()
    with torch.no_grad():
        assert torch.equal(model(**inputs), reference(**inputs))


def test_unsupported_architecture_is_refused_before_any_weight_is_read(tmp_path):
    directory = write_timm_checkpoint(tmp_path / "convnext", "convnext_atto", depths=(1, 1, 1, 1),
                                      dims=(8, 16, 32, 64), num_classes=NUM_CLASSES)
    (directory / "model.safetensors").unlink()  # a weight read would now fail with a SourceError instead

    with pytest.raises(UnsupportedModelError) as refused:
        load_timm_model(str(directory))
    message = str(refused.value)
    assert "convnext_atto" in message and "ViT/DeiT (timm)" in message and "\n" not in message

    (directory / "config.json").write_text(json.dumps({"architecture": "no_such_timm_net"}))
    with pytest.raises(UnsupportedModelError, match="no_such_timm_net.*unknown to timm"):
        load_timm_model(str(directory))


def test_missing_config_or_weights_is_a_source_error_naming_the_directory(tmp_path, timm_vit_dir):
    with pytest.raises(SourceError, match="has no config.json"):
        load_timm_model(str(tmp_path))

    (tmp_path / "config.json").write_text((timm_vit_dir / "config.json").read_text())
    with pytest.raises(SourceError, match=f"cannot build the timm model in {tmp_path}") as failed:
        load_timm_model(str(tmp_path))
    assert "\n" not in str(failed.value)


@pytest.mark.parametrize("checkpoint", sorted(ADAPTER_BY_CHECKPOINT))
def test_config_rebuilds_the_same_architecture_preprocessing_and_outputs(checkpoint, request):
    directory = request.getfixturevalue(checkpoint)
    model, adapter = load_adapted(directory)
    config = json.loads(json.dumps(timm_config_dict(model)))  # exactly what a saved config.json gives back

    rebuilt = build_timm_model(config)

    assert config["model_args"] == json.loads((directory / "config.json").read_text())["model_args"]
    assert type(rebuilt) is type(model)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert load_processor(directory, config) == adapter.data_config()
    rebuilt.load_state_dict(model.state_dict())
    inputs = adapter.example_inputs(batch_size=2, size=EXAMPLE_SIZE.get(checkpoint))
    with torch.no_grad():
        assert torch.allclose(rebuilt(**inputs), model(**inputs), atol=1e-6)


def test_model_created_in_memory_with_custom_kwargs_rebuilds_identically():
    model = create_tiny_timm_model("vit_tiny_patch16_224", img_size=24, patch_size=8, embed_dim=24, depth=1,
                                   num_heads=3, mlp_ratio=2.0, num_classes=7)

    rebuilt = build_timm_model(timm_config_dict(model))

    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert adapter_for(rebuilt).example_inputs()["x"].shape == (1, 3, 24, 24)
