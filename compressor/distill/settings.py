"""What a distillation run is configured by, declared once for the trainer, the `distill` command and recipes.

`TRAINING_PARAMS` declares the settings that decide a run's result (type, bounds, default, help); `DISTILL_PARAMS`
adds what a recipe's `distill` step must also name: the data and the teacher. From these declarations come
`DistillConfig` (the trainer's settings, checked by the same pydantic schema on construction), the recipe schema of
the `distill` step, the options of `cli.py distill` and the docs' table, so none of them can drift from another.
"""

from __future__ import annotations

from dataclasses import field, fields, make_dataclass

from compressor.distill.losses import EMBEDDING_LOSSES
from compressor.errors import CompressorError
from compressor.passes.base import Param
from compressor.settings_schema import InvalidSetting, check_setting, python_type

#: the name of the training step in a recipe (`distill_stage: {distill: {...}}`)
DISTILL = "distill"

TRAINING_PARAMS: dict[str, Param] = {
    "steps": Param("int", None, "Optimizer steps in total; null: `epochs` passes over the data.", minimum=1,
                   nullable=True),
    "epochs": Param("float", 1.0, "Passes over the training data (used when `steps` is null).", greater_than=0),
    "batch_size": Param("int", 64, "The global batch (split across processes under `accelerate launch`).",
                        minimum=1),
    "lr": Param("float", 1e-4, "AdamW learning rate (cosine decay after the warm-up).", greater_than=0),
    "weight_decay": Param("float", 0.0, "AdamW weight decay.", minimum=0),
    "warmup_steps": Param("int", 0, "Linear learning-rate warm-up steps.", minimum=0),
    "temperature": Param("float", 2.0, "Softmax temperature of the logits KL loss.", greater_than=0),
    "kd_weight": Param("float", 1.0, "Weight of the output-matching loss: KL between the student's and the "
                                     "teacher's logits, or for a model without logits (a bare encoder) the distance "
                                     "between their embeddings.", minimum=0),
    "embedding_loss": Param("str", "cosine", "For models without logits: the embedding distance, 1 − cosine or "
                                             "MSE.", choices=EMBEDDING_LOSSES),
    "task_weight": Param("float", 1.0, "Weight of the task loss where labels exist (cross-entropy; DETR's "
                                       "Hungarian-matched loss).", minimum=0),
    "feature_weight": Param("float", 0.0, "Weight of the hidden-state MSE at matched layers (0: off).", minimum=0),
    "box_weight": Param("float", 1.0, "DETR MTKD: weight of the L2 loss between the boxes of the rewritten path and "
                                      "of the original path, trained together (0: plain distillation).", minimum=0),
    "seed": Param("int", 0, "Seed of the data order and initialisation; the same seed reproduces a run."),
    "checkpoint_every": Param("int", 200, "Steps between accelerate checkpoints (for resuming).", minimum=1),
    "log_every": Param("int", 10, "Steps between lines of log.jsonl.", minimum=1),
    "eval_every": Param("int", None, "Steps between evaluations on `eval_data` that keep the best student; null: "
                                     "evaluate once, at the end.", minimum=1, nullable=True),
}

#: what a recipe's distill step names beyond the trainer's settings
_DATA_PARAMS: dict[str, Param] = {
    "data": Param("str", None, "Training data (a parquet/json file, an image or COCO folder, a Hub dataset id); "
                               "`cli.py compress --data` overrides it. Required unless given there.", nullable=True),
    "limit": Param("int", None, "Train on this many examples only (a seeded subset); null: all.", minimum=1,
                   nullable=True),
    "eval_data": Param("str", None, "Labelled data to evaluate on and pick the best student with; null: keep the "
                                    "last student.", nullable=True),
    "eval_limit": Param("int", None, "Evaluate on this many examples of `eval_data` only.", minimum=1,
                        nullable=True),
    "teacher": Param("str", None, "The teacher; null: the model being compressed, as it was before the passes.",
                     nullable=True),
}

DISTILL_PARAMS: dict[str, Param] = {**_DATA_PARAMS, **TRAINING_PARAMS}


def _check_settings(config) -> None:
    """Every setting through the schema the recipe uses, normalised (an int epoch count becomes a float)."""
    for name in TRAINING_PARAMS:
        try:
            setattr(config, name, check_setting(DISTILL, DISTILL_PARAMS, name, getattr(config, name)))
        except InvalidSetting as invalid:
            raise CompressorError(f"{name} {getattr(config, name)!r}: {invalid.problem}") from None


DistillConfig = make_dataclass(
    "DistillConfig",
    [(name, python_type(param), field(default=param.default)) for name, param in TRAINING_PARAMS.items()],
    namespace={"__post_init__": _check_settings, "__module__": __name__,
               "__doc__": "Everything that decides a run's result (written into the summary and the model card); one "
                          "attribute per `TRAINING_PARAMS` setting, checked on construction."})


def config_from_params(params: dict) -> DistillConfig:
    """The trainer's settings out of a recipe's (validated) distill parameters."""
    return DistillConfig(**{field.name: params[field.name] for field in fields(DistillConfig)})
