"""Detection agreement: the fidelity ACT's calibration targets on set-prediction detectors.

The output cosine of a detector's logits and boxes is dominated by its "no object" queries, so it barely moves while
AP falls; detection agreement weighs each query by the original's confidence in it. Unit checks on built tensors,
then calibration on the committed trained detector (benchmarks/fixtures/detector-cifar-canvases/, real weights).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import compressor
from compressor.evaluate.fidelity import detection_agreement, paired_box_iou

ROOT = Path(__file__).resolve().parents[1]
DETECTOR = ROOT / "benchmarks" / "fixtures" / "detector-cifar-canvases"


def _queries(confident_box=(0.5, 0.5, 0.2, 0.2), empty_box=(0.3, 0.3, 0.1, 0.1), confident_class=2,
             activation="sigmoid"):
    """Two queries over 4 classes: one confident detection, one "no object"."""
    if activation == "sigmoid":
        logits = torch.full((1, 2, 4), -8.0)
        logits[0, 0, confident_class] = 4.0
    else:  # DETR: the last of 5 logits is "no object"
        logits = torch.full((1, 2, 5), -4.0)
        logits[0, 0, confident_class] = 4.0
        logits[0, 1, -1] = 4.0
    return logits, torch.tensor([[confident_box, empty_box]])


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_a_detector_agrees_fully_with_itself(activation):
    reference = _queries(activation=activation)
    assert float(detection_agreement(reference, reference, activation)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_moving_a_confident_box_costs_its_iou_and_moving_a_no_object_box_almost_nothing(activation):
    reference = _queries(activation=activation)
    shifted = _queries(confident_box=(0.55, 0.5, 0.2, 0.2), activation=activation)  # a quarter of the width: IoU 0.6
    assert float(paired_box_iou(shifted[1][0, 0], reference[1][0, 0])) == pytest.approx(0.6, abs=1e-6)
    assert float(detection_agreement(reference, shifted, activation)) == pytest.approx(0.6, abs=0.01)
    empty_moved = _queries(empty_box=(0.8, 0.8, 0.1, 0.1), activation=activation)  # no overlap at all
    assert float(detection_agreement(reference, empty_moved, activation)) > 0.99


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_a_confident_detection_changing_class_loses_the_agreement(activation):
    reference = _queries(activation=activation)
    relabelled = _queries(confident_class=1, activation=activation)
    assert float(detection_agreement(reference, relabelled, activation)) < 0.05


@pytest.fixture(scope="module")
def calibration_canvases(tmp_path_factory) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks" / "fixtures"))
    import detector_canvases

    directory = tmp_path_factory.mktemp("detector-calib") / "train"
    detector_canvases.write_coco_train(directory, count=4)
    return directory


def test_act_calibration_on_the_trained_detector_meets_its_target_in_detection_agreement(calibration_canvases,
                                                                                          tmp_path):
    """The target is met in detection agreement, which the output cosine would not have told apart: it stays near
    1 at widths that move the detections."""
    result = compressor.compress(DETECTOR, "act-calibrated", calib=str(calibration_canvases), calib_samples=4,
                                 overrides=["act.fidelity_target=0.95", "act.rounds=8",
                                            "act.bucket_widths=[4.0, 8.0, 64.0]"], progress=False)
    fidelity = result.report["fidelity"]
    assert fidelity["calibration_detection_agreement"] >= 0.95
    card = (compressor.save(result, tmp_path / "out") / "README.md").read_text()
    assert "| calibration detection agreement with the original | 1 |" in card and "weighted by the original's" in card
    widths = {plan["bucket_width"] for plan in next(result.recipe.passes()).plan.values()}
    assert 64.0 not in widths  # the widest bucket clusters a canvas into a handful of prototypes
    wide = compressor.compress(DETECTOR, "act", calib=str(calibration_canvases), calib_samples=4,
                               overrides=["act.rounds=8", "act.bucket_width=64"], progress=False)
    wide_fidelity = wide.report["fidelity"]
    assert wide_fidelity["calibration_detection_agreement"] < 0.95
    assert wide_fidelity["calibration_cosine"] > 0.99
