"""Settings schemas: the pydantic model behind each declared set of `Param`s, and the CLI options built from it.

A setting is declared once, as a `Param` (a pass's parameters, the distillation settings). From that declaration
come the pydantic model that checks values (`settings_model`), which recipes and `cli.py distill` both use so they
accept exactly the same values, the argparse options of a command (`add_setting_options`), and the docs' tables.
Pydantic explains a refusal over several lines; `check_setting` turns it into the one-line `expects ..., got ...`
that recipe and CLI messages are made of.
"""

from __future__ import annotations

import argparse
import re
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from compressor.located_yaml import TOO_LARGE, within_size
from compressor.passes.base import Param

#: models compute in float32 (normal range ~1e-38 .. 3e38): a non-zero setting outside these magnitudes turns into
#: 0, inf or NaN somewhere downstream (a bucket width of 1e-40 divides projections into inf)
SMALLEST_MAGNITUDE, LARGEST_MAGNITUDE = 1e-30, 1e30
#: a number in exponent notation without a dot, which PyYAML (YAML 1.1) leaves as a string
_YAML12_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}
_OUT_OF_RANGE = "out of range"
_METAVARS = {"int": "N", "float": "X", "str": "TEXT", "bool": "BOOL"}


class InvalidSetting(Exception):
    """A value a setting refuses, as one line; `index` points into a list value when one item is at fault."""

    def __init__(self, problem: str, index: int | None = None):
        super().__init__(problem)
        self.problem, self.index = problem, index


def show_value(value: Any) -> str:
    """A value as the user would recognise it in YAML terms, short enough for one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _yaml12_float(value: Any) -> Any:
    """YAML 1.1 reads `1e-5` (no dot) as a string; YAML 1.2 and users read a number."""
    return float(value) if isinstance(value, str) and _YAML12_FLOAT.fullmatch(value.strip()) else value


def _computable(number: float) -> float:
    if number != 0 and not SMALLEST_MAGNITUDE <= abs(number) <= LARGEST_MAGNITUDE:
        raise ValueError(_OUT_OF_RANGE)
    return number


def _tuple_as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _lone_string_as_list(value: Any) -> Any:
    """A lone string is a one-item list of strings (`targets: auto`)."""
    return [value] if isinstance(value, str) else _tuple_as_list(value)


def _scalar_type(type_name: str, param: Param) -> Any:
    """One value's type: strict (no bool for numbers, no "3" for 3), bounded, finite, from its choices."""
    if param.choices is not None:
        return Literal[param.choices]
    if type_name == "float":
        return Annotated[float, BeforeValidator(_yaml12_float),
                         Field(strict=True, allow_inf_nan=False, gt=param.greater_than, ge=param.minimum,
                               le=param.maximum),
                         AfterValidator(_computable)]
    if type_name == "int":
        return Annotated[int, Field(strict=True, gt=param.greater_than, ge=param.minimum, le=param.maximum)]
    return Annotated[_SCALARS[type_name], Field(strict=True)]


def field_type(param: Param) -> Any:
    """The pydantic type of a declared setting."""
    if param.type.startswith("list["):
        item = _scalar_type(param.type[len("list["):-1], param)
        kind = Annotated[list[item], BeforeValidator(_lone_string_as_list if param.type == "list[str]" else
                                                     _tuple_as_list)]
    else:
        kind = _scalar_type(param.type, param)
    return Optional[kind] if param.nullable else kind


def python_type(param: Param) -> Any:
    """The plain Python annotation of a setting (for dataclasses built from the declaration)."""
    kind = list if param.type.startswith("list[") else _SCALARS[param.type]
    return Optional[kind] if param.nullable else kind


_MODELS: dict[tuple, type[BaseModel]] = {}


def settings_model(name: str, params: dict[str, Param]) -> type[BaseModel]:
    """The pydantic model of one step's settings (a pass's parameters, or `distill`'s), built once per step."""
    key = (name, tuple((setting, id(param)) for setting, param in params.items()))
    if key not in _MODELS:
        fields = {setting: (field_type(param), Field(default=param.default, description=param.help))
                  for setting, param in params.items()}
        _MODELS[key] = create_model(f"{name}_settings", __config__=ConfigDict(extra="forbid"), **fields)
    return _MODELS[key]


def check_setting(name: str, params: dict[str, Param], setting: str, value: Any) -> Any:
    """`value` checked against the declared `setting` of step `name` and normalised (int → float, a lone string →
    [string]); or `InvalidSetting` saying, in one line, what is allowed and what was given."""
    param = params[setting]
    try:
        return getattr(settings_model(name, params).model_validate({setting: value}), setting)
    except ValidationError as refusal:
        error = refusal.errors()[0]
        location = error["loc"][1:]
        index = next((part for part in location if isinstance(part, int)), None)
        if index is not None and isinstance(value, (list, tuple)):
            given, where = value[index], f" at [{index}]"
        else:
            given, where = value, ""
        if error["type"] == "value_error" and _OUT_OF_RANGE in error["msg"]:
            number = _yaml12_float(given)
            problem = (f"expects {param.describe_allowed()}, got {number:g}{where}, too "
                       f"{'small' if abs(number) < 1 else 'large'} to compute with (non-zero magnitudes from "
                       f"{SMALLEST_MAGNITUDE:g} to {LARGEST_MAGNITUDE:g})")
        else:
            problem = f"expects {param.describe_allowed()}, got {show_value(given)}{where}"
        raise InvalidSetting(problem, index) from None


def add_setting_options(parser: argparse.ArgumentParser, name: str, params: dict[str, Param]) -> None:
    """One `--option` per setting, read like a `--set` value (YAML scalar) and checked by the same schema, so the
    command accepts exactly what a recipe accepts; the help says the default and what is allowed."""
    for setting, param in params.items():
        parser.add_argument(f"--{setting.replace('_', '-')}", type=_option_reader(name, params, setting),
                            default=param.default, choices=param.choices,
                            metavar=None if param.choices else _METAVARS[param.type],
                            help=f"{param.help} Allowed: {param.describe_allowed()} (default "
                                 f"{show_value(param.default)}).".replace("%", "%%"))


def _option_reader(name: str, params: dict[str, Param], setting: str):
    def read(text: str) -> Any:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if not within_size(value):
            raise argparse.ArgumentTypeError(f"the value {TOO_LARGE}")
        if params[setting].choices is not None:
            return value  # argparse refuses anything else itself, naming the choices
        try:
            return check_setting(name, params, setting, value)
        except InvalidSetting as invalid:
            raise argparse.ArgumentTypeError(invalid.problem) from None

    read.__name__ = setting  # argparse names the type in its own messages
    return read
