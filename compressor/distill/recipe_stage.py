"""A recipe's `distill` step, run by `compress` after the passes, so one command gives the finished model.

It is the two commands chained (`compress`, then `distill` from the original as teacher), in memory: the compressed
model is the student and the original, kept by `compress` before the passes, is the teacher, so nothing is reloaded.
The training run is kept beside the output, in `OUT.distill/`: `student/` (the compressed model before training,
written once as the point a stopped run resumes from), the accelerate checkpoints, `log.jsonl` and `distill.json`.
The output directory itself only appears, atomically, once training has finished, holding the best student; the
checkpoints are removed then. A run that was stopped continues with
`cli.py distill OUT.distill/student --out OUT.distill --resume --data DATA ...` (printed when training starts, with
the step's data and settings).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.distill.settings import DISTILL, DISTILL_PARAMS, config_from_params
from compressor.errors import CompressorError
from compressor.output_guard import refuse_unsafe_replacement
from compressor.recipe import Recipe

if TYPE_CHECKING:
    from compressor.data.loading import LabelledData

TRAINING_SUFFIX = ".distill"
STUDENT = "student"


def training_directory(out: Path) -> Path:
    return out.with_name(out.name + TRAINING_SUFFIX)


def resume_command(out: Path, params: dict[str, Any]) -> str:
    """The command that continues a stopped training run: the step's data, teacher and every setting that is not
    the default become options of `cli.py distill` (the same names), so the run resumes as it was configured."""
    work = training_directory(out)
    words = ["python", "cli.py", DISTILL, str(work / STUDENT), "--out", str(work), "--resume"]
    for name, param in DISTILL_PARAMS.items():
        if params[name] is not None and params[name] != param.default:
            words += [f"--{name.replace('_', '-')}", str(params[name])]
    return shlex.join(words)


def resolve_distill_step(recipe: Recipe, out: Path, *, data: str | None, eval_data: str | None, skip: bool,
                         overwrite: bool) -> Recipe:
    """The recipe as it will run: without its distill step when skipped, else with the data filled in.

    Checked before anything slow: training needs data, runs in one process here, and must not mix with an older run.
    """
    spec = recipe.distill()
    if spec is None:
        if data is not None or eval_data is not None:
            raise CompressorError(f"--data/--eval-data are for a recipe's {DISTILL} step, and {recipe.source} has "
                                  f"none; add a distill_stage to the recipe, or train afterwards with `cli.py "
                                  f"{DISTILL}`")
        return recipe
    if skip:
        return recipe.without_distill()
    recipe = copy.deepcopy(recipe)  # paths are set as given, not read as YAML as `--set` values are
    params = recipe.distill().params
    for key, value in (("data", data), ("eval_data", eval_data)):
        if value is not None:
            params[key] = value
    if params["data"] is None:
        raise CompressorError(f"{recipe.source} ends with a {DISTILL} step, which needs training data: give --data "
                              "DATA (e.g. ../shared/data/cifar10/train.parquet) or --set distill.data=DATA; or "
                              "--no-distill to write the compressed model without training it")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CompressorError(f"compress runs its {DISTILL} step in one process; to train on several, compress "
                              f"with --no-distill, then `accelerate launch cli.py {DISTILL} OUT --data DATA ...`")
    work = training_directory(out)
    if work.exists() and not overwrite:
        raise CompressorError(f"{work} holds an earlier training run; continue it with "
                              f"`{resume_command(out, params)}`, or pass --overwrite to start again")
    if work.exists():
        refuse_unsafe_replacement(work)  # --overwrite lets the run below delete it
    return recipe


def load_distill_data(params: dict[str, Any]) -> tuple[LabelledData, LabelledData | None]:
    """The distill step's training data and evaluation data (None without one), each subset to its limit."""
    from compressor.data.loading import load_labelled

    data = load_labelled(params["data"]).subset(params["limit"])
    eval_data = load_labelled(params["eval_data"]).subset(params["eval_limit"]) if params["eval_data"] else None
    return data, eval_data


def check_distill_data(recipe: Recipe) -> tuple[LabelledData, LabelledData | None] | None:
    """Open the distill step's data now and read every image's header, so that bad training data is refused before
    the passes run, not after minutes of compression (labels are checked against the model's classes when training
    starts). Returns the checked data for `run_distill_step`, which then reads no header again; None for a recipe
    without a distill step."""
    spec = recipe.distill()
    if spec is None:
        return None
    data, eval_data = load_distill_data(spec.params)
    for item in (data, eval_data):
        if item is not None:
            item.check_images()
    return data, eval_data


def run_distill_step(result, out: Path, *, progress: bool = True, overwrite: bool = False,
                     revision: str | None = None, trust_remote_code: bool = False,
                     checked_data: tuple[LabelledData, LabelledData | None] | None = None) -> dict[str, Any]:
    """Train the compressed model in `result` (whose recipe ends with `distill`), then write the best to `out`.
    `checked_data`: what `check_distill_data` returned for this recipe (else the data is opened here)."""
    from compressor.atomic_dir import atomic_directory
    from compressor.distill.trainer import CHECKPOINTS, Distiller
    from compressor.recipe_runner import log

    params = result.recipe.distill().params
    work = training_directory(out)
    shutil.rmtree(work, ignore_errors=True)  # an earlier run, which --overwrite allowed to replace
    student = _student_with_resume_point(result, work / STUDENT)
    teacher = _teacher(result, params["teacher"], revision=revision, trust_remote_code=trust_remote_code)
    # `cli.py distill` defaults to the student's base model as teacher: name the source when that is another model
    named = {**params, "teacher": None if teacher.source == result.loaded.base_model else teacher.source}
    log(f"{DISTILL}: training in {work} (if stopped, continue with `{resume_command(out, named)}`)", progress)
    data, eval_data = checked_data or load_distill_data(params)
    summary = Distiller(student, teacher, data, work, config_from_params(params), eval_data, progress=progress,
                        recipe=result.recipe).run()
    result.model.eval()  # the last step's student; the best one is what `out` receives
    result.original = None  # the teacher is no longer needed
    with atomic_directory(out, overwrite=overwrite) as staging:
        shutil.copytree(work / "best", staging, dirs_exist_ok=True)
    shutil.rmtree(work / CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(work / "best", ignore_errors=True)
    return summary


def _student_with_resume_point(result, directory: Path):
    """The compressed model in memory as the student, after writing it once to `directory`: the starting point
    `cli.py distill --resume` rebuilds, and where the trainer reads the report and recipe the best student keeps."""
    from compressor.serialization import save
    from compressor.sources import COMPRESSION_KEY, read_config

    save(result, directory)
    return dataclasses.replace(result.loaded, source=str(directory), directory=directory,
                               compression=read_config(directory)[COMPRESSION_KEY])


def _teacher(result, teacher: str | None, *, revision: str | None, trust_remote_code: bool):
    """The step's teacher: the named source, else the original `compress` kept before the passes (loaded again
    only for a result that did not keep it)."""
    from compressor.models import adapter_for
    from compressor.sources import LoadedModel, load_source

    if teacher is None and result.original is not None:
        loaded = result.loaded
        return LoadedModel(result.original, adapter_for(result.original, loaded.adapter.processor),
                           result.report["source"], loaded.base_model)
    return load_source(teacher or result.report["source"], revision=None if teacher else revision,
                       trust_remote_code=trust_remote_code)


def distill_and_save(result, out, *, data: str | None = None, eval_data: str | None = None,
                     overwrite: bool = False, progress: bool = True) -> Path:
    """The Python API's `distill` step: train a `compressor.compress` result whose recipe ends with `distill`, then
    write the best student to `out` (what `cli.py compress` does after the passes). `result.model` is trained in
    place: it ends as the last step's student, and `out` holds the best one."""
    out = Path(out)
    if result.recipe.distill() is None:
        raise CompressorError(f"{result.recipe.source} has no {DISTILL} step; add a distill_stage to the recipe, or "
                              "save the result with compressor.save")
    result.recipe = resolve_distill_step(result.recipe, out, data=data, eval_data=eval_data, skip=False,
                                         overwrite=overwrite)
    result.report["distillation"] = run_distill_step(result, out, progress=progress, overwrite=overwrite)
    return out
