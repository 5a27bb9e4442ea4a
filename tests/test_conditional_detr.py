"""Conditional DETR as a family: DETR's encoder sites and passes (exact settings, reload), the decoder's MLPs only,
and sigmoid (focal-loss) classification in detections, fidelity and MTKD."""

from __future__ import annotations

import json

import pytest
import torch

import compressor
from compressor.cli import main
from compressor.data.loading import load_labelled
from compressor.distill.losses import logits_kl, prediction_kl
from compressor.distill.settings import DistillConfig
from compressor.distill.trainer import LossComputer
from compressor.evaluate.runner import evaluate
from compressor.recipe import Recipe
from compressor.sources import load_source
from tests.checkpoints_hf import small_detr_config
from tests.shared_assets import shared
from test_tied_weights import tie_satisfying_checkpoint

#: 256×256: 64 encoder tokens, enough for ACT to pay (at the processor's 64×85 there are 6)
ACT_SIZE = (256, 256)


def small_conditional_detr(num_labels: int = 5):
    """ConditionalDetrForObjectDetection with the small DETR fixture's backbone and widths, its encoder attention
    sharpened (random attention is near uniform: clustering or clipping would change almost nothing)."""
    from transformers import ConditionalDetrConfig, ConditionalDetrForObjectDetection

    detr = small_detr_config()
    config = ConditionalDetrConfig(
        backbone_config=detr.backbone_config, use_timm_backbone=False, use_pretrained_backbone=False,
        d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, num_labels=num_labels, dropout=0.0)
    torch.manual_seed(0)
    model = ConditionalDetrForObjectDetection(config).eval()
    with torch.no_grad():
        for layer in model.model.encoder.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return model


def _save(model, directory):
    from transformers import ConditionalDetrImageProcessor

    model.save_pretrained(directory)
    ConditionalDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def conditional_detr_dir(tmp_path_factory):
    """Small Conditional DETR; its processor resizes a 640×480 image to 64×85."""
    return _save(small_conditional_detr(), tmp_path_factory.mktemp("conditional-detr"))


def _outputs(loaded, model, size=None):
    inputs = loaded.adapter.example_inputs(batch_size=2, size=size, seed=5)
    with torch.no_grad():
        return loaded.adapter.primary_output(model(**inputs), inputs)


def _recipe(name: str, **params) -> Recipe:
    return Recipe.from_dict({"compress_stage": {name: params or None}})


# --- sites -----------------------------------------------------------------------------------------------------
def test_inspect_lists_the_encoder_sites_and_only_the_mlps_of_the_decoder(conditional_detr_dir, capsys):
    assert main(["inspect", str(conditional_detr_dir), "--recipe", "act", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "hf-conditional-detr"
    encoder_attention = ["model.encoder.layers.0.self_attn", "model.encoder.layers.1.self_attn"]
    assert info["passes"]["act"]["sites"] == info["passes"]["act"]["candidates"] == encoder_attention
    adapter = load_source(conditional_detr_dir).adapter
    assert [site.name for site in adapter.attention_sites()] == encoder_attention
    assert [site.name for site in adapter.ffn_sites()] == [f"model.{stack}.layers.{i}.mlp"
                                                           for stack in ("encoder", "decoder") for i in (0, 1)]
    assert [block.name for block in adapter.blocks()] == ["model.encoder.layers.0", "model.encoder.layers.1"]


def test_targeting_the_decoder_attention_selects_nothing_and_says_so(conditional_detr_dir):
    recipe = Recipe.from_dict({"compress_stage": {"act": {"targets": [r"re:model\.decoder\."]}}})
    with pytest.raises(compressor.CompressorError, match=r"matches no act site .* sites are: model\.encoder\."):
        compressor.compress(conditional_detr_dir, recipe, progress=False, latency_runs=1)


# --- exact settings --------------------------------------------------------------------------------------------
EXACT = {
    "act": (_recipe("act", bucket_width=1e-5), ACT_SIZE),
    "token_clip": (_recipe("token_clip", keep_ratio=1.0), None),
    "prune": (_recipe("prune", ratio=0), None),
}


@pytest.mark.parametrize("case", EXACT)
def test_exact_settings_give_identical_outputs(case, conditional_detr_dir):
    recipe, size = EXACT[case]
    original = load_source(conditional_detr_dir)
    result = compressor.compress(conditional_detr_dir, recipe, progress=False, latency_runs=1, input_size=size)
    difference = (_outputs(original, original.model, size) - _outputs(result.loaded, result.model, size)).abs()
    assert difference.max().item() <= 1e-5


def test_tying_a_checkpoint_that_satisfies_the_tie_leaves_outputs_unchanged(conditional_detr_dir, tmp_path):
    recipe = _recipe("tied_weights")
    source = tie_satisfying_checkpoint(conditional_detr_dir, tmp_path / "satisfied", recipe)
    original = load_source(source)
    result = compressor.compress(source, recipe, progress=False, latency_runs=1)
    assert result.report["params"]["after"] < result.report["params"]["before"]
    assert (_outputs(original, original.model) - _outputs(result.loaded, result.model)).abs().max().item() <= 1e-5


# --- every pass applies, and reloads identically -------------------------------------------------------------------
APPLIED = {
    "act": (_recipe("act", rounds=1, bucket_width=1000), ACT_SIZE),  # one cluster per head: far from exact
    "token_clip": (_recipe("token_clip", keep_ratio=0.5), None),
    "tied_weights": (_recipe("tied_weights", init="closed_form"), None),
    "prune": (_recipe("prune", ratio=0.5), None),
    "prune-decoder-mlps": (_recipe("prune", ratio=0.5, targets=[r"re:model\.decoder\.layers\.\d+\.mlp$"]), None),
}


@pytest.mark.parametrize("case", APPLIED)
def test_each_pass_changes_the_model_and_reload_gives_identical_outputs(case, conditional_detr_dir, tmp_path):
    recipe, size = APPLIED[case]
    original = load_source(conditional_detr_dir)
    result = compressor.compress(conditional_detr_dir, recipe, progress=False, latency_runs=1, input_size=size)
    assert result.report["passes"][0]["sites"]
    changed = (_outputs(original, original.model, size) - _outputs(result.loaded, result.model, size)).abs()
    assert changed.max().item() > 1e-4
    reloaded = load_source(compressor.save(result, tmp_path / "out"))
    assert reloaded.compression["family"] == "hf-conditional-detr"
    assert (_outputs(result.loaded, result.model, size) - _outputs(reloaded, reloaded.model, size)).abs().max() <= 1e-5


def test_prune_by_default_targets_the_encoder_layers_and_the_decoder_mlps(conditional_detr_dir):
    """The decoder layers are not blocks (their attention has no site), but their MLPs are plain FFNs to prune."""
    result = compressor.compress(conditional_detr_dir, _recipe("prune", ratio=0.5), progress=False, latency_runs=1)
    sites = set(result.report["passes"][0]["sites"])
    decoder_mlps = {f"model.decoder.layers.{index}.mlp" for index in range(len(result.model.model.decoder.layers))}
    assert decoder_mlps <= sites and not any(site.endswith("self_attn") for site in sites)
    original = load_source(conditional_detr_dir).model
    for index, layer in enumerate(result.model.model.decoder.layers):
        assert layer.mlp.fc1.out_features < original.model.decoder.layers[index].mlp.fc1.out_features


def test_token_clip_runs_the_kept_encoder_tokens_and_restores_the_full_map(conditional_detr_dir):
    result = compressor.compress(conditional_detr_dir, _recipe("token_clip", keep_ratio=0.5), progress=False,
                                 latency_runs=1)
    inputs = result.loaded.adapter.example_inputs()
    seen = []
    layer = result.model.model.encoder.layers[1]
    handle = layer.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        outputs = result.model(**inputs)
    handle.remove()
    tokens = result.loaded.adapter.token_layout(inputs).sequence_length
    assert seen[0] < tokens and outputs.encoder_last_hidden_state.shape[1] == tokens


# --- sigmoid classification ------------------------------------------------------------------------------------
def test_detections_are_the_best_query_class_pairs_by_sigmoid_score_whatever_processor_is_saved(
        conditional_detr_dir, tmp_path):
    from transformers import DetrImageProcessor

    directory = tmp_path / "with-detr-processor"
    load_source(conditional_detr_dir).model.save_pretrained(directory)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(directory)
    loaded = load_source(directory)
    inputs = loaded.adapter.example_inputs()
    with torch.no_grad():
        outputs = loaded.model(**inputs)
    detections = loaded.adapter.detections(outputs, [(480, 640)])[0]
    queries, classes = outputs.logits.shape[1:]
    assert len(detections["scores"]) == min(100, queries * classes)  # every class of every query competes
    best = outputs.logits[0].sigmoid().flatten().sort(descending=True).values
    assert torch.allclose(detections["scores"], best[:len(detections["scores"])])
    assert set(detections["labels"].tolist()) <= set(range(classes))  # the last class is a class, not "no object"


def test_sigmoid_kl_adds_the_bernoulli_kl_of_every_class():
    teacher, student = torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[1.0, 0.0, -0.5]])
    p, q = teacher.sigmoid(), student.sigmoid()
    by_hand = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1)
    assert torch.allclose(prediction_kl(student, teacher, "sigmoid"), by_hand)
    assert prediction_kl(teacher, teacher, "sigmoid").item() == pytest.approx(0.0, abs=1e-7)
    # a softmax would see only the differences between logits: shifting all of them changes nothing for it
    assert prediction_kl(student + 3, student, "softmax").item() == pytest.approx(0.0, abs=1e-6)
    assert prediction_kl(student + 3, student, "sigmoid").item() > 0.1
    assert logits_kl(student, teacher, 2.0, "sigmoid") == pytest.approx(4 * prediction_kl(student / 2, teacher / 2,
                                                                                           "sigmoid").item())


@pytest.fixture(scope="module")
def coco_act_student(tmp_path_factory):
    """The small Conditional DETR with COCO's 91 class ids, compressed with ACT at its coarsest."""
    teacher = _save(small_conditional_detr(num_labels=91), tmp_path_factory.mktemp("cdetr-coco") / "teacher")
    result = compressor.compress(teacher, _recipe("act", rounds=1, bucket_width=1000), progress=False,
                                 latency_runs=1, input_size=ACT_SIZE)
    return compressor.save(result, teacher.parent / "act")


def test_evaluate_on_coco_gives_ap_and_sigmoid_fidelity(coco_act_student):
    data = load_labelled(str(shared("coco128-val"))).subset(2)
    student, teacher = load_source(coco_act_student), load_source(load_source(coco_act_student).base_model)
    itself = evaluate(teacher, data, reference=load_source(teacher.source), batch_size=2, progress=False)
    assert set(itself["metrics"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert itself["fidelity"]["logit_kl"] == pytest.approx(0.0, abs=1e-6)
    result = evaluate(student, data, reference=teacher, batch_size=2, progress=False)
    inputs = student.adapter.prepare_inputs(data.examples(0, 2))
    with torch.no_grad():
        expected = prediction_kl(student.model(**inputs).logits, teacher.model(**inputs).logits, "sigmoid").mean()
    assert result["fidelity"]["logit_kl"] == pytest.approx(expected.item(), rel=1e-4) and expected > 0


def test_mtkd_distils_the_per_class_sigmoids(coco_act_student):
    student = load_source(coco_act_student)
    teacher = load_source(student.base_model)
    config = DistillConfig(steps=1, batch_size=2)
    losses = LossComputer(student, teacher.model, load_labelled(str(shared("coco128-val"))).subset(2), config)
    inputs = student.adapter.example_inputs(batch_size=2, size=ACT_SIZE)
    targets = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    _, parts = losses(student.model, inputs, targets)
    assert {"task", "task_original", "box_l2", "kd"} <= set(parts)
    with torch.no_grad():
        logits, reference = student.model(**inputs).logits, teacher.model(**inputs).logits
    sigmoid, softmax = (logits_kl(logits, reference, config.temperature, activation).item() * config.kd_weight
                        for activation in ("sigmoid", "softmax"))
    assert parts["kd"] == pytest.approx(sigmoid, rel=1e-4) and parts["kd"] != pytest.approx(softmax, rel=1e-2)


def test_a_processor_that_resizes_to_a_fixed_size_sets_the_example_size(tmp_path):
    """A detector trained on fixed-size canvases is measured at that size, not at COCO's 800×1066."""
    from transformers import ConditionalDetrImageProcessor

    directory = tmp_path / "fixed"
    small_conditional_detr().save_pretrained(directory)
    ConditionalDetrImageProcessor(size={"height": 96, "width": 128}, do_pad=False).save_pretrained(directory)
    adapter = load_source(directory).adapter
    assert adapter.native_image_size() == (96, 128)
    assert adapter.example_inputs()["pixel_values"].shape[-2:] == (96, 128)
