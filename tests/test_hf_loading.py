"""Loading transformers models from a local directory or a Hub id, the one-line errors for bad sources, and
rebuilding an architecture from its saved config (what reloading a compressed model starts from)."""

import json
import shutil

import pytest
import torch

from compressor.errors import CompressorError, SourceError, UnsupportedModelError
from compressor.loaders.hf_models import build_hf_model, hf_config_dict, load_hf_model
from compressor.models import AttentionSite
from hub_servers import put_in_hub_cache

CHECKPOINTS = ["hf_vit_dir", "hf_deit_dir", "hf_swin_dir", "hf_resnet_dir", "hf_detr_dir", "hf_bert_dir"]
PROCESSOR_CLASS = {"hf_vit_dir": "ViTImageProcessor", "hf_deit_dir": "DeiTImageProcessor",
                   "hf_swin_dir": "ViTImageProcessor", "hf_resnet_dir": "ViTImageProcessor",
                   "hf_detr_dir": "DetrImageProcessor", "hf_bert_dir": "BertTokenizer"}


def shapes(model) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def assert_one_line_error(error_type, source, *expected_fragments):
    with pytest.raises(error_type) as raised:
        load_hf_model(str(source))
    message = str(raised.value)
    assert "\n" not in message
    for fragment in expected_fragments:
        assert fragment in message
    return message


# --- loading ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_local_directory_loads_the_saved_class_in_eval_mode_with_its_processor(checkpoint, request):
    directory = request.getfixturevalue(checkpoint)
    saved = json.loads((directory / "config.json").read_text())

    model, processor = load_hf_model(str(directory))

    assert type(model).__name__ == saved["architectures"][0]
    assert not model.training
    assert type(processor).__name__ == PROCESSOR_CLASS[checkpoint]


def test_loaded_weights_are_the_weights_that_were_saved(tmp_path):
    """transformers 5.x renames keys on disk (ViT: `vit.encoder.layer.0.attention.attention.query`) and back on
    load (`vit.layers.0.attention.q_proj`); what comes back must still be exactly what was saved."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(1)
    saved = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                                num_attention_heads=2, intermediate_size=32, num_labels=3))
    saved.save_pretrained(tmp_path)

    loaded, _ = load_hf_model(str(tmp_path))

    assert loaded.state_dict().keys() == saved.state_dict().keys()
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in saved.state_dict().items())


def test_directory_without_processor_files_gives_no_processor(hf_resnet_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(hf_resnet_dir / name, bare / name)

    model, processor = load_hf_model(str(bare))

    assert processor is None and type(model).__name__ == "ResNetForImageClassification"


def test_real_pretrained_models_load_offline(minilm_dir, vit_cifar10_dir):
    minilm, tokenizer = load_hf_model(str(minilm_dir))
    vit, image_processor = load_hf_model(str(vit_cifar10_dir))

    assert type(minilm).__name__ == "BertModel" and tokenizer.vocab_size == 30522
    assert type(vit).__name__ == "ViTForImageClassification" and image_processor.image_mean[0] == pytest.approx(0.4914)


def test_hub_id_resolves_through_the_hub_cache_like_a_download(hf_detr_dir, empty_hub_cache):
    put_in_hub_cache(empty_hub_cache, "tiny-org/detr", hf_detr_dir)

    model, processor = load_hf_model("tiny-org/detr")

    assert type(model).__name__ == "DetrForObjectDetection"
    assert type(processor).__name__ == "DetrImageProcessor" and processor.size.shortest_edge == 64


# --- bad sources ---------------------------------------------------------------------------------------------------

def test_missing_local_directory_is_a_source_error(tmp_path):
    assert_one_line_error(SourceError, tmp_path / "no-such-model", "does not exist", "no-such-model")


def test_directory_without_config_is_a_source_error(tmp_path):
    assert_one_line_error(SourceError, tmp_path, "no config.json")


def test_unknown_hub_id_offline_says_what_was_tried_and_names_hf_hub_offline(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert_one_line_error(SourceError, "some-org/no-such-model", "some-org/no-such-model", "HF_HUB_OFFLINE")


def test_malformed_hub_id_is_a_source_error():
    assert_one_line_error(SourceError, "not a model id!", "not a model id!", "valid Hub id")


def test_weights_that_are_not_safetensors_are_a_source_error(hf_vit_dir, tmp_path):
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(hf_vit_dir / "config.json", config_only / "config.json")

    assert_one_line_error(SourceError, config_only, "cannot load the weights", "safetensors")


def test_unsupported_architecture_is_rejected_from_its_config_before_any_weights(tmp_path):
    from transformers import CLIPConfig, GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=16,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(gpt2)
    clip_config_only = tmp_path / "clip"
    CLIPConfig().save_pretrained(clip_config_only)

    message = assert_one_line_error(UnsupportedModelError, gpt2, "'gpt2'", "GPT2LMHeadModel", "ViT/DeiT")
    assert "DETR (transformers)" in message
    assert_one_line_error(UnsupportedModelError, clip_config_only, "'clip'")


def test_every_loading_error_is_a_compressor_error():
    assert issubclass(SourceError, CompressorError) and issubclass(UnsupportedModelError, CompressorError)


# --- rebuilding ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_build_hf_model_rebuilds_the_same_architecture_from_the_saved_config(checkpoint, request):
    original, _ = load_hf_model(str(request.getfixturevalue(checkpoint)))
    as_saved = json.loads(json.dumps(hf_config_dict(original)))

    rebuilt = build_hf_model(as_saved)

    assert type(rebuilt) is type(original)
    assert shapes(rebuilt) == shapes(original)
    assert not rebuilt.training


def test_config_dict_is_what_save_pretrained_writes(hf_detr_dir, tmp_path):
    model, _ = load_hf_model(str(hf_detr_dir))
    model.save_pretrained(tmp_path)

    assert hf_config_dict(model) == json.loads((tmp_path / "config.json").read_text())


def test_config_dict_names_the_class_even_when_the_config_does_not():
    from transformers import ResNetConfig, ResNetModel

    model = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1]))

    assert model.config.architectures is None
    assert type(build_hf_model(hf_config_dict(model))) is ResNetModel


def test_config_of_a_model_with_installed_kernels_still_rebuilds_a_plain_model(hf_vit_dir):
    from compressor.models import adapter_for

    model, processor = load_hf_model(str(hf_vit_dir))
    adapter = adapter_for(model, processor)

    class Identity(torch.nn.Module):
        def forward(self, query, key, value, attention_mask, scale):
            return value

    site: AttentionSite = adapter.attention_sites()[0]
    adapter.install_attention_kernel(site, Identity())
    rebuilt = build_hf_model(hf_config_dict(model))

    assert "_attn_implementation" not in hf_config_dict(model)
    assert model.config._attn_implementation == "compressor" != rebuilt.config._attn_implementation
    assert not hasattr(rebuilt.get_submodule(site.name), "attention_kernel")
    assert shapes(rebuilt) == shapes(model)
