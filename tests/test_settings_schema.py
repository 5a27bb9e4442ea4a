"""One schema for settings: a recipe, `cli.py distill` and `DistillConfig` accept and refuse the same values, with
one line each, because all three check the pydantic model built from the one declaration of each setting."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel

from compressor.cli import build_parser, main
from compressor.distill.settings import DISTILL, DISTILL_PARAMS, TRAINING_PARAMS, DistillConfig
from compressor.errors import CompressorError, RecipeError
from compressor.passes import PASSES
from compressor.passes.base import Param
from compressor.recipe import Recipe, step_params
from compressor.settings_schema import InvalidSetting, check_setting, settings_model

DISTILL_RECIPE = "description: x\ncompress_stage:\n  act:\ndistill_stage:\n  distill:\n    {key}: {value}\n"


def refused_value(param: Param):
    """A value just outside what `param` allows (its bound, or a fraction for an unbounded integer)."""
    if param.greater_than is not None:
        return param.greater_than
    if param.minimum is not None:
        return param.minimum - (1 if param.type == "int" else 0.1)
    return 1.5


def recipe_error(key: str, value) -> str:
    with pytest.raises(RecipeError) as error:
        Recipe.from_yaml(DISTILL_RECIPE.format(key=key, value=value), "recipe.yaml")
    return str(error.value)


def cli_error(capsys, option: str, value) -> str:
    with pytest.raises(SystemExit) as usage_error:
        main(["distill", "student", "--data", "data", "--out", "out", option, str(value)])
    assert usage_error.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


@pytest.mark.parametrize("key", [key for key, param in TRAINING_PARAMS.items() if param.choices is None])
def test_cli_distill_refuses_what_the_recipe_refuses_with_the_same_message(key, capsys):
    value = refused_value(TRAINING_PARAMS[key])
    message = recipe_error(key, value)
    assert message.startswith(f"recipe.yaml:6: distill_stage.distill.{key} expects ")
    fragment = message.split(f"distill.{key} ", 1)[1]
    assert f"argument --{key.replace('_', '-')}: {fragment} " in cli_error(capsys, f"--{key.replace('_', '-')}", value)
    with pytest.raises(CompressorError, match=f"{key} .*: {fragment.split(', got')[0]}"):
        DistillConfig(**{key: value})


def test_the_issue_examples_are_refused_by_the_cli(capsys):
    assert "--kd-weight: expects a number >= 0, got -1 " in cli_error(capsys, "--kd-weight", -1)
    assert "--epochs: expects a number > 0, got 0 " in cli_error(capsys, "--epochs", 0)
    assert "--weight-decay: expects a number >= 0, got -0.1 " in cli_error(capsys, "--weight-decay", -0.1)


def test_a_choice_outside_the_choices_is_refused_by_both(capsys):
    assert "distill.embedding_loss expects one of cosine, mse, got 'l1'" in recipe_error("embedding_loss", "l1")
    assert "invalid choice: 'l1'" in cli_error(capsys, "--embedding-loss", "l1")


def test_cli_options_are_the_declared_settings_with_their_defaults():
    args = build_parser().parse_args(["distill", "student", "--data", "data", "--out", "out"])
    assert DistillConfig(**{key: getattr(args, key) for key in TRAINING_PARAMS}) == DistillConfig()
    assert args.eval_limit is DISTILL_PARAMS["eval_limit"].default
    args = build_parser().parse_args(["distill", "s", "--data", "d", "--out", "o", "--epochs", "2", "--steps", "null",
                                      "--lr", "1e-5"])
    assert (args.epochs, args.steps, args.lr) == (2.0, None, 1e-5) and isinstance(args.epochs, float)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e-40", "1e+40", "5.0e-324"])
def test_floats_that_are_not_finite_or_not_computable_are_refused_in_one_line(value):
    with pytest.raises(RecipeError) as error:
        Recipe.from_yaml(f"description: x\ncompress_stage:\n  act:\n    bucket_width: {value}\n", "recipe.yaml")
    message = str(error.value)
    assert message.startswith("recipe.yaml:4: compress_stage.act.bucket_width expects a number > 0, got ")
    assert "\n" not in message
    with pytest.raises(RecipeError, match=r"--set act.bucket_width=.*: act.bucket_width expects a number > 0"):
        Recipe.load("act").with_overrides([f"act.bucket_width={value}"])


def test_a_tiny_positive_float_says_it_is_too_small_to_compute_with():
    with pytest.raises(InvalidSetting, match=r"got 1e-40, too small to compute with \(non-zero magnitudes from"):
        check_setting("act", step_params("act"), "bucket_width", 1e-40)
    with pytest.raises(InvalidSetting, match=r"got 1e\+40 at \[1\], too large") as error:
        check_setting("act", step_params("act"), "bucket_widths", [1.0, 1e40])
    assert error.value.index == 1
    assert check_setting("act", step_params("act"), "bucket_widths", (1, 2.5)) == [1.0, 2.5]
    assert check_setting(DISTILL, DISTILL_PARAMS, "weight_decay", 0) == 0.0


def test_every_pass_and_the_distill_step_have_one_pydantic_model_with_their_defaults():
    for name in [*PASSES, DISTILL]:
        model = settings_model(name, step_params(name))
        assert issubclass(model, BaseModel) and model is settings_model(name, step_params(name))
        assert model().model_dump() == {key: param.default for key, param in step_params(name).items()}
    with pytest.raises(Exception):
        settings_model("act", step_params("act")).model_validate({"roundz": 3})


def test_distill_config_normalises_like_the_recipe():
    config = DistillConfig(epochs=2, weight_decay=0)
    assert isinstance(config.epochs, float) and config.epochs == 2.0 and math.isfinite(config.weight_decay)
    with pytest.raises(CompressorError, match="kd_weight -1: expects a number >= 0, got -1"):
        DistillConfig(kd_weight=-1)
    with pytest.raises(CompressorError, match="lr nan: expects a number > 0, got nan"):
        DistillConfig(lr=float("nan"))
