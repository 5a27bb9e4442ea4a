"""The distillation loop, on accelerate: one CPU, one or many GPUs, several CPU processes (DDP with gloo),
mixed precision or DeepSpeed/FSDP — whatever `accelerate launch` / `torchrun` and accelerate's config say.

`batch_size` is the global batch: accelerate splits each batch across the processes (`split_batches`), so two
processes compute the same gradients as one with the same global batch. The data order is a function of the seed
and the epoch (accelerate's seedable sampler), which makes a run reproducible and lets `resume` continue from the
last checkpoint (`accelerate` state: model, optimizer, scheduler, RNGs) exactly where a killed run stopped; each
step's dropout is seeded from (seed, step, process), so it too is the same after a resume.

Written to OUT: `checkpoints/step-N/` (accelerate state + trainer_state.json, the last two kept), `log.jsonl` (one
JSON object per logged step and per evaluation), `best/` (the best student so far in the compressed-model format,
`compressor.load`-able), and `distill.json` (the summary).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from compressor import strict_json
from compressor.data.loading import CLASSIFICATION, DETECTION, UNLABELLED, LabelledData
from compressor.distill.data import Collate, Examples
from compressor.distill.losses import box_l2, embedding_distance, feature_mse, logits_kl
from compressor.distill.settings import DistillConfig
from compressor.errors import CompressorError
from compressor.models.base import AttentionKernel
from compressor.loaders.loaded_model import LoadedModel

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
KEEP_CHECKPOINTS = 2


def on_step_end(step: int) -> None:
    """Called after every optimizer step (tests replace it to interrupt a run as a kill would)."""


def _no_accelerator_device() -> bool:
    """True on a CPU-only machine. accelerate treats `torchrun` processes as one CPU group (MULTI_CPU, gloo) only
    when told `cpu=True`; without it (accelerate 1.15, a CUDA build of torch without a GPU) each process trained
    alone on the whole batch."""
    devices = getattr(torch, "accelerator", None)
    return not (devices.is_available() if devices is not None else torch.cuda.is_available())


def _set_kernels(model: torch.nn.Module, enabled: bool) -> None:
    for module in model.modules():
        if isinstance(module, AttentionKernel) and hasattr(module, "enabled"):
            module.enabled = enabled


class LossComputer:
    """The weighted distillation loss for one batch, and its parts (for the log).

    A model with logits learns the teacher's softened logits (`kd`) and the labels where data has them (`task`);
    a bare encoder (no logits, e.g. a sentence embedder) learns the teacher's embedding (`embedding`: the adapter's
    primary output, by cosine or MSE). Either may add `feature` MSE between matched hidden states.
    """

    def __init__(self, student: LoadedModel, teacher: torch.nn.Module, data: LabelledData, config: DistillConfig):
        from compressor.evaluate.classification import check_labels, class_columns, model_class_count, \
            model_label_names

        self.adapter, self.teacher, self.task, self.config = student.adapter, teacher, data.task, config
        self.headless = not student.adapter.has_head()
        self.columns = None
        if data.task == CLASSIFICATION and config.task_weight > 0 and not self.headless:
            outputs = model_class_count(student.model)
            if outputs is not None:
                self.columns = class_columns(model_label_names(student.model), outputs, data.label_names)
                check_labels(data.all_labels(), len(data.label_names or []) or outputs,
                             lambda row: data.where(row, data.label_column))

    def __call__(self, model: torch.nn.Module, inputs: dict, targets: Any) -> tuple[torch.Tensor, dict[str, float]]:
        config = self.config
        hidden = {"output_hidden_states": True} if config.feature_weight > 0 else {}
        with torch.no_grad():
            teacher_outputs = self.teacher(**inputs, **hidden)
        parts: dict[str, torch.Tensor] = {}
        if self.task == DETECTION:
            outputs = model(**inputs, labels=targets, **hidden)
            student_logits, teacher_logits = outputs.logits, teacher_outputs.logits
            parts["task"] = outputs.loss * config.task_weight
            if config.box_weight > 0:  # MTKD: the original (exact attention) path, trained together
                _set_kernels(model, False)
                try:
                    original = model(**inputs, labels=targets)
                finally:
                    _set_kernels(model, True)
                parts["task_original"] = original.loss * config.task_weight
                parts["box_l2"] = box_l2(outputs.pred_boxes, original.pred_boxes) * config.box_weight
        else:
            outputs = model(**inputs, **hidden)
            student_logits = self.adapter.primary_output(outputs, inputs)
            teacher_logits = self.adapter.primary_output(teacher_outputs, inputs)
            if config.task_weight > 0 and self.task == CLASSIFICATION and not self.headless:
                logits = student_logits[:, self.columns] if self.columns is not None else student_logits
                parts["task"] = torch.nn.functional.cross_entropy(logits, targets) * config.task_weight
        if config.kd_weight > 0 and self.headless:
            parts["embedding"] = embedding_distance(student_logits, teacher_logits, config.embedding_loss) * \
                config.kd_weight
        elif config.kd_weight > 0:
            activation = self.adapter.query_class_activation if self.task == DETECTION else "softmax"
            parts["kd"] = logits_kl(student_logits, teacher_logits, config.temperature, activation) * config.kd_weight
        if config.feature_weight > 0:
            if getattr(outputs, "hidden_states", None) is None:
                raise CompressorError("feature distillation needs hidden states; this model does not return them "
                                      "(set feature_weight to 0)")
            parts["feature"] = feature_mse(outputs.hidden_states, teacher_outputs.hidden_states,
                                           inputs.get("attention_mask")) * config.feature_weight
        if not parts:
            raise CompressorError("every distillation loss has weight 0 for this model and data; raise "
                                  "--kd-weight (or --feature-weight)")
        total = sum(parts.values())
        return total, {name: float(value.detach()) for name, value in parts.items()}


def _schedule(config: DistillConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def latest_checkpoint(out: Path) -> Path | None:
    folders = [p for p in (out / CHECKPOINTS).glob("step-*") if (p / TRAINER_STATE).is_file()]
    return max(folders, key=lambda p: int(p.name.split("-")[1])) if folders else None


def _scores(result: dict) -> dict[str, float]:
    """An evaluation's task metrics and fidelity to the teacher, in one flat record."""
    return {**result["metrics"], **(result.get("fidelity") or {})}


def _headline(result: dict) -> float | None:
    """What picks the best checkpoint: the task's metric (top-1, AP), else the embedding cosine to the teacher."""
    from compressor.evaluate.runner import HEADLINE

    if result["metrics"]:
        return result["metrics"].get(HEADLINE[result["task"]])
    return _scores(result).get("cosine")


class Distiller:
    """One distillation run; `run()` trains, checkpoints, evaluates and saves the best student."""

    def __init__(self, student: LoadedModel, teacher: LoadedModel, data: LabelledData, out: Path,
                 config: DistillConfig, eval_data: LabelledData | None = None, progress: bool = True,
                 recipe=None):
        """`recipe`: what `best/` records as its recipe (default: the student's own, from its directory)."""
        if student.compression is None or student.directory is None:
            raise CompressorError(f"{student.source} is not a directory written by compress; distill a compressed "
                                  "model (the best student is saved in the same format)")
        from compressor.evaluate.runner import check_modality

        for item in (data, eval_data) if eval_data is not None else (data,):
            check_modality(student, item)
            item.check_images()
        # the labels are checked against the student's classes here, before anything is written
        self.losses = LossComputer(student, teacher.model, data, config)
        self.student, self.teacher, self.data, self.out = student, teacher, data, Path(out)
        self.config, self.eval_data, self.progress, self.recipe = config, eval_data, progress, recipe

    # --- bookkeeping ---------------------------------------------------------------------------------------------
    def _log(self, accelerator, record: dict) -> None:
        if accelerator.is_main_process:
            with open(self.out / "log.jsonl", "a") as log:
                log.write(strict_json.dumps(record) + "\n")

    def _checkpoint(self, accelerator, state: dict) -> None:
        folder = self.out / CHECKPOINTS / f"step-{state['step']}"
        accelerator.save_state(str(folder))
        if accelerator.is_main_process:
            (folder / TRAINER_STATE).write_text(strict_json.dumps(state) + "\n")
            older = sorted((p for p in (self.out / CHECKPOINTS).glob("step-*") if p != folder),
                           key=lambda p: int(p.name.split("-")[1]))
            for stale in older[:max(0, len(older) - KEEP_CHECKPOINTS + 1)]:
                shutil.rmtree(stale, ignore_errors=True)
        accelerator.wait_for_everyone()

    def _evaluate(self, model) -> dict | None:
        if self.eval_data is None:
            return None
        from compressor.evaluate.runner import evaluate

        was_training = model.training
        view = LoadedModel(model, self.student.adapter, self.student.source, self.student.base_model)
        no_task_metric = self.eval_data.task == UNLABELLED or not self.student.adapter.has_head()
        result = evaluate(view, self.eval_data, reference=self.teacher if no_task_metric else None, progress=False)
        model.train(was_training)
        return result

    def _save_best(self, model, summary: dict) -> None:
        from compressor.recipe import Recipe
        from compressor.serialization import RECIPE, REPORT, save

        directory = self.student.directory
        report = json.loads((directory / REPORT).read_text())
        report["distillation"] = summary
        loaded = LoadedModel(model, self.student.adapter, self.student.source, self.student.base_model,
                             self.student.compression, directory)
        recipe = self.recipe or Recipe.load(str(directory / RECIPE))
        result = SimpleNamespace(loaded=loaded, recipe=recipe, report=report,
                                 seed=int(self.student.compression.get("seed", 0)))
        was_training = model.training
        model.eval()
        save(result, self.out / "best", overwrite=True)
        model.train(was_training)

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
        from accelerate.utils import set_seed
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        config = self.config
        # a student may hold parameters its loss never reaches (a bare BERT's pooler when its embedding is the
        # mean of the tokens): DDP must then be told, or the second step fails
        accelerator = Accelerator(cpu=_no_accelerator_device(), dataloader_config=DataLoaderConfiguration(
            split_batches=True, use_seedable_sampler=True, data_seed=config.seed),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        if config.batch_size % accelerator.num_processes:
            raise CompressorError(f"--batch-size {config.batch_size} (the global batch) must be a multiple of the "
                                  f"{accelerator.num_processes} processes")
        set_seed(config.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoint = latest_checkpoint(self.out) if resume else None
        if resume and checkpoint is None:
            raise CompressorError(f"--resume: {self.out / CHECKPOINTS} holds no checkpoint to resume from")

        model, teacher = self.student.model, self.teacher.model
        teacher.eval().requires_grad_(False).to(accelerator.device)
        model.train()
        loader = DataLoader(Examples(self.data), batch_size=config.batch_size, shuffle=True, drop_last=True,
                            collate_fn=Collate(self.student.adapter, self.data.task, self._class_of_category()))
        if len(loader) == 0:
            raise CompressorError(f"{self.data.spec}: {len(self.data)} examples make no batch of "
                                  f"{config.batch_size}; lower --batch-size")
        steps_per_epoch = len(loader)
        total = config.steps or max(1, math.ceil(config.epochs * steps_per_epoch))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                      weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total))
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
        losses = self.losses

        state = {"step": 0, "best": None, "best_step": None, "before": None}
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
            state = json.loads((checkpoint / TRAINER_STATE).read_text())
        elif accelerator.is_main_process:
            (self.out / "log.jsonl").unlink(missing_ok=True)
            if self.eval_data is not None:
                before = self._evaluate(accelerator.unwrap_model(model))
                state["before"] = _scores(before)
                self._log(accelerator, {"step": 0, "eval": state["before"]})

        started, seen = time.perf_counter(), 0
        bar = tqdm(total=total, initial=state["step"], unit="step", desc="distill", file=sys.stderr,
                   disable=not (self.progress and accelerator.is_local_main_process))
        while state["step"] < total:
            epoch, offset = divmod(state["step"], steps_per_epoch)
            loader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(loader, offset) if offset else loader
            for inputs, targets in batches:
                # the step's own randomness (dropout) depends on the seed, the step and the process only, so a
                # resumed run draws what the uninterrupted one did (iterating a DataLoader also draws from the
                # global generator, at different points when resuming mid-epoch)
                torch.manual_seed(config.seed * 1_000_003 + state["step"] * accelerator.num_processes +
                                  accelerator.process_index)
                loss, parts = losses(model, inputs, targets)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                state["step"] += 1
                seen += config.batch_size
                bar.update(1)
                step = state["step"]
                if step % config.log_every == 0 or step == total:
                    mean_loss = float(accelerator.reduce(loss.detach(), "mean"))
                    self._log(accelerator, {"step": step, "epoch": epoch, "loss": mean_loss, **parts,
                                            "lr": scheduler.get_last_lr()[0],
                                            "images_per_second": seen / (time.perf_counter() - started)})
                if config.eval_every and (step % config.eval_every == 0 or step == total):
                    self._maybe_save_best(accelerator, model, state)
                if step % config.checkpoint_every == 0 or step == total:
                    self._checkpoint(accelerator, state)
                on_step_end(step)
                if step >= total:
                    break
        bar.close()
        if not config.eval_every:
            self._maybe_save_best(accelerator, model, state)
        summary = self._summary(state, total, time.perf_counter() - started)
        if accelerator.is_main_process:
            (self.out / "distill.json").write_text(strict_json.dumps(summary, indent=2) + "\n")
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return summary

    def _maybe_save_best(self, accelerator, model, state: dict) -> None:
        """Evaluate (main process) and keep `best/` when the headline metric improved (always, without eval data)."""
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            result = self._evaluate(unwrapped)
            metric = _headline(result) if result is not None else None
            if result is not None:
                self._log(accelerator, {"step": state["step"], "eval": _scores(result)})
            if result is None or state["best"] is None or (metric is not None and metric > state["best"]):
                state["best"], state["best_step"] = metric, state["step"]
                self._save_best(unwrapped, self._summary(state, None, None))
        accelerator.wait_for_everyone()

    def _class_of_category(self) -> dict[int, int] | None:
        """For detection data: category id → the student's class, by name; the ids themselves when no name matches
        (then every id must be one of the model's classes)."""
        if self.data.task != DETECTION:
            return None
        from compressor.evaluate.classification import model_label_names
        from compressor.evaluate.coco import category_ids

        mapping = category_ids(model_label_names(self.student.model), self.data.coco["categories"])
        if mapping is not None:
            return {category: index for index, category in mapping.items()}
        classes = self.student.model.config.num_labels
        largest = max((a["category_id"] for a in self.data.coco["annotations"]), default=0)
        if largest >= classes:
            raise CompressorError(f"{self.data.spec} has category id {largest} but the model has {classes} classes "
                                  "and no matching class names; train on data labelled with the model's classes")
        return None

    def _summary(self, state: dict, total: int | None, seconds: float | None) -> dict[str, Any]:
        return {"teacher": self.teacher.source, "student": self.student.source, "data": self.data.spec,
                "examples": len(self.data), "eval_data": self.eval_data.spec if self.eval_data else None,
                "config": asdict(self.config), "steps": state["step"], "total_steps": total,
                "before": state.get("before"), "best": state["best"], "best_step": state["best_step"],
                "seconds_this_session": round(seconds, 1) if seconds is not None else None}
