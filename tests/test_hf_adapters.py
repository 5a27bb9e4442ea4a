"""transformers adapters: sites, token layouts, example inputs and attention-kernel routing on real architectures
(small checkpoints from checkpoints_hf), plus the real MiniLM and the trained CIFAR-10 ViT on real data."""

import io

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from compressor.errors import CompressorError
from compressor.models import AttentionKernel, AttentionSite, adapter_for
from compressor.models.hf_bert import HFBertAdapter
from compressor.loaders.hf_models import load_hf_model
from compressor.models.hf_detr import HFDetrAdapter
from compressor.models.hf_resnet import HFResNetAdapter
from compressor.models.hf_swin import HFSwinAdapter
from compressor.models.hf_vit import HFViTAdapter
from probes import input_of
from shared_assets import shared

#: checkpoint fixture -> (adapter class, model class, attention module class of every site)
FAMILIES = {
    "hf_vit_dir": (HFViTAdapter, "ViTForImageClassification", {"ViTAttention"}),
    "hf_deit_dir": (HFViTAdapter, "DeiTForImageClassificationWithTeacher", {"DeiTAttention"}),
    "hf_swin_dir": (HFSwinAdapter, "SwinForImageClassification", {"SwinAttention"}),
    "hf_resnet_dir": (HFResNetAdapter, "ResNetForImageClassification", set()),
    "hf_detr_dir": (HFDetrAdapter, "DetrForObjectDetection", {"DetrSelfAttention", "DetrCrossAttention"}),
    "hf_bert_dir": (HFBertAdapter, "BertForSequenceClassification", {"BertSelfAttention"}),
}
TRANSFORMER_CHECKPOINTS = sorted(name for name, (_, _, attention) in FAMILIES.items() if attention)
VISION_CHECKPOINTS = ["hf_vit_dir", "hf_deit_dir", "hf_swin_dir", "hf_resnet_dir", "hf_detr_dir"]
COCO_CATS = "coco-fixture/000000039769.png"


def load_adapted(directory):
    model, processor = load_hf_model(str(directory))
    return adapter_for(model, processor)


def cifar10_test_images(count: int) -> tuple[list[Image.Image], list[int]]:
    table = pq.read_table(shared("cifar10/test.parquet")).slice(0, count).to_pylist()
    return [Image.open(io.BytesIO(row["img"]["bytes"])) for row in table], [row["label"] for row in table]


class ExactKernelThatCounts(AttentionKernel):
    """Exact attention through torch's SDPA; remembers how often it ran and the masks it was given."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.masks = []
        self.register_buffer("state", torch.arange(3.0))

    def forward(self, query, key, value, attention_mask, scale):
        self.calls += 1
        self.masks.append(attention_mask)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scale)


def primary(adapter, inputs):
    with torch.no_grad():
        return adapter.primary_output(adapter.model(**inputs), inputs)


def install_counting_kernels(adapter, sites):
    kernels = {}
    for site in sites:
        kernels[site.name] = ExactKernelThatCounts()
        adapter.install_attention_kernel(site, kernels[site.name])
    return kernels


# --- which adapter, which sites -----------------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint", sorted(FAMILIES))
def test_each_family_loads_from_its_directory_and_gets_its_adapter(checkpoint, request):
    adapter = load_adapted(request.getfixturevalue(checkpoint))
    adapter_class, model_class, _ = FAMILIES[checkpoint]

    assert type(adapter) is adapter_class
    assert type(adapter.model).__name__ == model_class
    assert adapter.library == "transformers"
    assert not adapter.model.training


@pytest.mark.parametrize("checkpoint", TRANSFORMER_CHECKPOINTS)
def test_attention_sites_are_the_attention_modules_with_their_head_counts(checkpoint, request):
    adapter = load_adapted(request.getfixturevalue(checkpoint))
    config = adapter.model.config
    sites = adapter.attention_sites()

    assert sites, "a transformer has attention sites"
    assert {type(adapter.module(site.name)).__name__ for site in sites} == FAMILIES[checkpoint][2]
    for site in sites:
        for projection in (site.query, site.key, site.value, site.output):
            assert isinstance(adapter.module(projection), nn.Linear)
        assert adapter.module(site.query).out_features == site.num_heads * site.head_dim
        assert adapter.module(site.output).in_features == site.num_heads * site.head_dim
        assert not site.fused_qkv
    if checkpoint == "hf_swin_dir":
        assert [site.num_heads for site in sites] == [h for h, d in zip(config.num_heads, config.depths)
                                                      for _ in range(d)]
    else:
        assert {site.num_heads for site in sites} == {config.num_attention_heads}


def test_vit_sites_use_the_q_k_v_o_projections_of_vit_attention(hf_vit_dir):
    site = load_adapted(hf_vit_dir).attention_sites()[1]

    assert (site.name, site.stack, site.layer, site.kind, site.scope) == (
        "vit.layers.1.attention", "encoder", 1, "self", "global")
    assert (site.query, site.key, site.value, site.output) == tuple(
        f"vit.layers.1.attention.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj"))


def test_bert_output_projection_is_the_attention_output_dense(hf_bert_dir):
    site = load_adapted(hf_bert_dir).attention_sites()[0]

    assert site.name == "bert.encoder.layer.0.attention.self"
    assert site.query == "bert.encoder.layer.0.attention.self.query"
    assert site.output == "bert.encoder.layer.0.attention.output.dense"


def test_detr_has_encoder_self_decoder_self_and_decoder_cross_attention(hf_detr_dir):
    adapter = load_adapted(hf_detr_dir)
    described = [(s.stack, s.layer, s.kind, s.scope, s.name) for s in adapter.attention_sites()]

    assert described == [
        ("encoder", 0, "self", "global", "model.encoder.layers.0.self_attn"),
        ("encoder", 1, "self", "global", "model.encoder.layers.1.self_attn"),
        ("decoder", 0, "self", "global", "model.decoder.layers.0.self_attn"),
        ("decoder", 0, "cross", "global", "model.decoder.layers.0.encoder_attn"),
        ("decoder", 1, "self", "global", "model.decoder.layers.1.self_attn"),
        ("decoder", 1, "cross", "global", "model.decoder.layers.1.encoder_attn"),
    ]
    assert [(f.stack, f.layer) for f in adapter.ffn_sites()] == [("encoder", 0), ("encoder", 1), ("decoder", 0),
                                                                ("decoder", 1)]


def test_swin_sites_are_window_attention_numbered_per_stage(hf_swin_dir):
    adapter = load_adapted(hf_swin_dir)

    assert {site.scope for site in adapter.attention_sites()} == {"window"}
    assert [(b.stack, b.layer) for b in adapter.blocks()] == [(f"stage{s}", i) for s in range(4) for i in range(2)]
    assert adapter.blocks()[3].name == "swin.encoder.layers.1.blocks.1"


@pytest.mark.parametrize("checkpoint", TRANSFORMER_CHECKPOINTS)
def test_ffn_sites_name_an_expanding_and_a_projecting_linear(checkpoint, request):
    adapter = load_adapted(request.getfixturevalue(checkpoint))

    assert len(adapter.ffn_sites()) == len(adapter.blocks())
    for ffn in adapter.ffn_sites():
        fc1, fc2 = adapter.module(ffn.fc1), adapter.module(ffn.fc2)
        assert isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)
        assert fc1.out_features == fc2.in_features > fc1.in_features == fc2.out_features
        assert isinstance(adapter.module(ffn.activation), nn.Module)


@pytest.mark.parametrize("checkpoint", TRANSFORMER_CHECKPOINTS)
def test_transformer_blocks_name_their_attention_and_ffn_sites(checkpoint, request):
    adapter = load_adapted(request.getfixturevalue(checkpoint))
    attention_names = {site.name for site in adapter.attention_sites()}
    ffn_names = {site.name for site in adapter.ffn_sites()}

    for block in adapter.blocks():
        assert block.kind == "transformer"
        assert block.attention in attention_names and block.attention.startswith(block.name + ".")
        assert block.ffn in ffn_names and block.ffn.startswith(block.name + ".")


def test_resnet_blocks_are_bottlenecks_of_three_convolutions_and_no_attention(hf_resnet_dir):
    adapter = load_adapted(hf_resnet_dir)
    config = adapter.model.config
    blocks = adapter.blocks()

    assert adapter.attention_sites() == [] and adapter.ffn_sites() == []
    assert [(b.stack, b.layer) for b in blocks] == [(f"stage{s}", i) for s, d in enumerate(config.depths)
                                                    for i in range(d)]
    for block in blocks:
        convs = [adapter.module(name) for name in block.convs]
        assert block.kind == "bottleneck"
        assert all(isinstance(conv, nn.Conv2d) for conv in convs)
        assert [conv.kernel_size for conv in convs] == [(1, 1), (3, 3), (1, 1)]
        assert convs[0].out_channels == convs[2].in_channels == convs[2].out_channels // 4
    with pytest.raises(CompressorError):
        adapter.install_attention_kernel(AttentionSite("resnet.encoder", "stage0", 0, "self", "global", 1, 1,
                                                       "a", "b", "c", "d"), ExactKernelThatCounts())


# --- inputs, outputs, token layouts --------------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint", sorted(FAMILIES))
def test_example_inputs_run_and_the_primary_output_is_batch_by_features(checkpoint, request):
    adapter = load_adapted(request.getfixturevalue(checkpoint))
    inputs = adapter.example_inputs(batch_size=2, seed=3)

    output = primary(adapter, inputs)

    assert output.ndim == 2 and output.shape[0] == 2 and torch.isfinite(output).all()
    assert all(torch.equal(inputs[k], v) for k, v in adapter.example_inputs(batch_size=2, seed=3).items())
    assert not torch.equal(next(iter(inputs.values())), next(iter(adapter.example_inputs(2, seed=4).values())))


def test_primary_outputs_are_the_heads_predictions(hf_vit_dir, hf_deit_dir, hf_detr_dir):
    vit, deit, detr = (load_adapted(d) for d in (hf_vit_dir, hf_deit_dir, hf_detr_dir))
    num_queries, num_classes = detr.model.config.num_queries, detr.model.config.num_labels + 1

    assert primary(vit, vit.example_inputs()).shape == (1, 10)
    with torch.no_grad():
        teacher_outputs = deit.model(**deit.example_inputs())
    assert torch.equal(deit.primary_output(teacher_outputs, {}),
                       (teacher_outputs.cls_logits + teacher_outputs.distillation_logits) / 2)
    assert primary(detr, detr.example_inputs()).shape == (1, num_queries * (num_classes + 4))


def test_detr_example_input_is_the_benchmark_size_unless_its_processor_says_otherwise(hf_detr_dir):
    adapter = load_adapted(hf_detr_dir)
    without_processor = adapter_for(adapter.model, None)

    assert adapter.example_inputs()["pixel_values"].shape == (1, 3, 64, 85)
    assert without_processor.example_inputs()["pixel_values"].shape == (1, 3, 800, 1066)
    inputs = adapter.example_inputs(size=(96, 128))
    assert inputs["pixel_mask"].shape == (1, 96, 128) and bool(inputs["pixel_mask"].all())
    assert without_processor.token_layout(without_processor.example_inputs()).grid == (25, 34)


@pytest.mark.parametrize("checkpoint,size", [("hf_vit_dir", (48, 64)), ("hf_deit_dir", (48, 48)),
                                             ("hf_swin_dir", (96, 96)), ("hf_detr_dir", (96, 128)),
                                             ("hf_bert_dir", (24,))])
def test_token_layout_matches_the_tokens_the_first_block_receives(checkpoint, size, request):
    adapter = load_adapted(request.getfixturevalue(checkpoint))
    inputs = adapter.example_inputs(size=size)
    first_block = adapter.module(adapter.blocks()[0].name)

    layout = adapter.token_layout(inputs)
    tokens = input_of(first_block, adapter.model, inputs)

    assert layout.sequence_length == tokens.shape[1]
    if layout.grid is not None:
        assert layout.grid[0] * layout.grid[1] + len(layout.prefix_tokens) == layout.sequence_length


@pytest.mark.parametrize("checkpoint,expected", [
    ("hf_vit_dir", dict(prefix_tokens=("cls",), grid=(4, 4), sequence_length=17)),
    ("hf_deit_dir", dict(prefix_tokens=("cls", "distillation"), grid=(4, 4), sequence_length=18)),
    ("hf_swin_dir", dict(prefix_tokens=(), grid=(32, 32), window=(4, 4), sequence_length=1024)),
    ("hf_detr_dir", dict(prefix_tokens=(), grid=(2, 3), sequence_length=6)),
    ("hf_bert_dir", dict(prefix_tokens=("cls",), sequence_length=128, text=True)),
    ("hf_resnet_dir", dict(prefix_tokens=(), grid=None, sequence_length=None)),
])
def test_token_layout_of_the_example_input(checkpoint, expected, request):
    layout = load_adapted(request.getfixturevalue(checkpoint)).token_layout()

    assert {key: getattr(layout, key) for key in expected} == expected


# --- attention kernels ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint", ["hf_vit_dir", "hf_deit_dir", "hf_swin_dir", "hf_bert_dir"])
def test_an_exact_kernel_leaves_outputs_unchanged_and_runs_at_every_site(checkpoint, request):
    adapter = load_adapted(request.getfixturevalue(checkpoint))
    inputs = adapter.example_inputs(batch_size=2)
    reference = primary(adapter, inputs)

    kernels = install_counting_kernels(adapter, adapter.attention_sites())
    output = primary(adapter, inputs)

    assert (output - reference).abs().max().item() <= 1e-5
    assert [kernel.calls for kernel in kernels.values()] == [1] * len(kernels)
    state = adapter.model.state_dict()
    assert all(torch.equal(state[f"{name}.attention_kernel.state"], torch.arange(3.0)) for name in kernels)


def test_detr_encoder_kernels_run_and_the_decoder_keeps_its_own_attention(hf_detr_dir):
    adapter = load_adapted(hf_detr_dir)
    inputs = adapter.example_inputs(batch_size=2, size=(96, 128))
    inputs["pixel_mask"][1, :, 64:] = 0  # the second image is padded on the right, as in a real batch
    reference = primary(adapter, inputs)
    encoder_sites = [site for site in adapter.attention_sites() if site.stack == "encoder"]

    kernels = install_counting_kernels(adapter, encoder_sites)
    output = primary(adapter, inputs)

    assert (output - reference).abs().max().item() <= 1e-5
    assert [kernel.calls for kernel in kernels.values()] == [1, 1]
    mask = kernels[encoder_sites[0].name].masks[0]
    assert mask.dtype == torch.bool and mask.shape == (2, 1, 12, 12)
    assert bool(mask[0].all()) and not bool(mask[1].all())
    assert not any(hasattr(adapter.module(site.name), "attention_kernel") for site in adapter.attention_sites()
                   if site.stack == "decoder")


@pytest.mark.parametrize("checkpoint", ["hf_bert_dir", "minilm_dir"])
def test_bert_kernels_see_padded_keys_masked_and_keep_padded_batches_exact(checkpoint, request):
    adapter = load_adapted(request.getfixturevalue(checkpoint))
    batch = adapter.prepare_inputs(["short text", "a much longer sentence that needs quite a few more tokens"])
    reference = primary(adapter, batch)

    kernels = install_counting_kernels(adapter, adapter.attention_sites())
    output = primary(adapter, batch)

    assert (output - reference).abs().max().item() <= 1e-5
    mask = next(iter(kernels.values())).masks[0]
    assert mask.dtype == torch.bool
    assert torch.equal(mask[:, 0, 0, :], batch["attention_mask"].bool())
    assert not bool(batch["attention_mask"][0].all()), "the short text is padded"


def test_installing_a_kernel_where_no_attention_is_computed_fails_with_one_line(hf_vit_dir):
    adapter = load_adapted(hf_vit_dir)
    real = adapter.attention_sites()[0]
    not_attention = AttentionSite(**{**real.__dict__, "name": "vit.layers.0.mlp"})

    with pytest.raises(CompressorError) as error:
        adapter.install_attention_kernel(not_attention, ExactKernelThatCounts())

    assert "vit.layers.0.mlp" in str(error.value) and "\n" not in str(error.value)


# --- real preprocessing, real weights -------------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint", VISION_CHECKPOINTS)
@pytest.mark.parametrize("with_processor", [True, False], ids=["own-processor", "documented-default"])
def test_prepare_inputs_turns_real_images_into_model_inputs(checkpoint, with_processor, request):
    adapter = load_adapted(request.getfixturevalue(checkpoint))
    if not with_processor:
        adapter = adapter_for(adapter.model, None)
    images = [Image.open(shared(COCO_CATS))] + cifar10_test_images(2)[0]

    inputs = adapter.prepare_inputs(images)

    assert inputs["pixel_values"].shape[:2] == (3, 3)
    if checkpoint == "hf_detr_dir":
        expected = (800, 1066) if not with_processor else (64, 85)  # the 640×480 cats set the padded size
        assert tuple(inputs["pixel_values"].shape[-2:]) == expected
        assert not bool(inputs["pixel_mask"][1].all()), "square CIFAR images are padded in a 4:3 batch"
        return
    assert tuple(inputs["pixel_values"].shape[-2:]) == adapter.native_image_size()
    assert primary(adapter, inputs).shape[0] == 3


def test_prepare_inputs_tokenizes_text_with_padding_and_truncation(hf_bert_dir, minilm_dir):
    small, minilm = load_adapted(hf_bert_dir), load_adapted(minilm_dir)
    long_text = " ".join(["word"] * 600)

    batch = small.prepare_inputs(["hello world", long_text])

    assert batch["input_ids"].shape == (2, 160)  # the small model's maximum position
    assert batch["input_ids"][0, 0].item() == small.processor.cls_token_id
    assert batch["attention_mask"][0].sum().item() == 4  # [CLS] hello world [SEP]
    assert minilm.prepare_inputs([long_text])["input_ids"].shape == (1, 256)


def test_example_text_is_framed_by_cls_and_sep(minilm_dir):
    adapter = load_adapted(minilm_dir)

    ids = adapter.example_inputs(batch_size=2, size=(40,))["input_ids"]

    assert ids.shape == (2, 40)
    assert (ids[:, 0] == adapter.processor.cls_token_id).all() and (ids[:, -1] == adapter.processor.sep_token_id).all()
    assert not torch.isin(ids[:, 1:-1], torch.tensor(adapter.processor.all_special_ids)).any()


def test_minilm_primary_output_is_a_sentence_embedding_that_ranks_paraphrases_first(minilm_dir):
    adapter = load_adapted(minilm_dir)
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
                 "A man is riding a horse."]
    inputs = adapter.prepare_inputs(sentences)

    embeddings = F.normalize(primary(adapter, inputs), dim=1)
    similarity = embeddings[0] @ embeddings[1:].T

    assert embeddings.shape == (4, 384)
    assert similarity.argmax().item() == 0 and similarity[0] > 0.5 > similarity[1]


def test_trained_cifar10_vit_classifies_real_test_images_far_above_chance(vit_cifar10_dir):
    adapter = load_adapted(vit_cifar10_dir)
    images, labels = cifar10_test_images(64)

    logits = primary(adapter, adapter.prepare_inputs(images))
    accuracy = (logits.argmax(dim=1) == torch.tensor(labels)).float().mean().item()

    assert type(adapter) is HFViTAdapter and len(adapter.attention_sites()) == 6
    assert adapter.token_layout().sequence_length == 65
    assert accuracy > 0.4  # 0.62 on the full test set; chance is 0.1
