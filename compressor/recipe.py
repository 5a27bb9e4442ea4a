"""Recipes: which passes run, in which order, on which sites, with which parameters.

A recipe is YAML in the style users of llm-compressor know: stages (top-level keys ending in `_stage`, run in
file order) of named passes (run in order within a stage), each with `targets` / `ignore` patterns, its
parameters, and optionally the `plan` a previous run calibrated (so a compressed model can be rebuilt exactly)::

    description: One line shown by `cli.py recipes`.
    compress_stage:
      act:
        targets: [auto]
        rounds: 32

A recipe may end with a training step, `distill` (usually in its own `distill_stage`), whose parameters are the
distillation settings (`compressor.distill.settings`); `compress` runs it after the passes, from the original model
as teacher.

Everything about parameters comes from their one declaration (`Pass.all_params()`, the distillation settings),
checked by the pydantic schema built from it (`compressor.settings_schema`), so a new pass needs no change here.
Validation walks the YAML node tree itself (`yaml.compose`, safe loading only) so that every mistake is
reported as one line `file:line: dotted.path ...` saying what is wrong and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NoReturn, Sequence

import yaml

from compressor.builtin_recipes import RECIPES_DIR
from compressor.distill.settings import DISTILL, DISTILL_PARAMS
from compressor.errors import RecipeError
from compressor.located_yaml import TOO_LARGE, YAML_SCALARS, Located, within_size, yaml_problem
from compressor.passes import AUTO, PASSES, Param, Pass
from compressor.settings_schema import InvalidSetting, check_setting, show_value

BUILTIN_PREFIX = "built-in:"
STAGE_SUFFIX = "_stage"
#: stage names end up in dotted `--set` keys, so they may not contain dots
STAGE_NAME = re.compile(r"[A-Za-z0-9_-]+" + STAGE_SUFFIX)
#: the key of a pass mapping that holds the per-site plan rather than a parameter
PLAN_KEY = "plan"
#: parameters (common to every pass) whose strings are site patterns
PATTERN_PARAMS = ("targets", "ignore")
REGEX_PREFIX = "re:"
#: what a plan setting may hold: what YAML writes and reads back unchanged
PLAN_SCALARS = YAML_SCALARS
OVERRIDE_FORMS = "<pass>.<param>=<value> or <stage>.<pass>.<param>=<value>"


def step_params(name: str) -> dict[str, Param]:
    """The parameters of a recipe step: a pass's, or the distillation settings for `distill`."""
    return DISTILL_PARAMS if name == DISTILL else PASSES[name].all_params()


def known_steps() -> list[str]:
    """What a stage may hold: every pass, and `distill`."""
    return sorted(PASSES) + [DISTILL]


# --- the data ----------------------------------------------------------------------------------------------------

@dataclass
class PassSpec:
    """One pass as the recipe asks for it: every parameter resolved, and the plan if one was written."""

    stage: str
    name: str
    params: dict[str, Any]
    plan: dict[str, dict[str, Any]] | None = None
    #: where the pass was written (1-based), for messages; not part of a recipe's identity
    line: int | None = field(default=None, compare=False)

    @property
    def pass_class(self) -> type[Pass]:
        return PASSES[self.name]


@dataclass
class Stage:
    name: str
    passes: list[PassSpec]


@dataclass
class Recipe:
    """A validated recipe; two recipes are equal when they would do the same thing, wherever they came from."""

    description: str
    stages: list[Stage]
    #: a path, `built-in:<name>` or another label of where the recipe came from
    source: str = field(default="<recipe>", compare=False)

    def passes(self) -> Iterator[PassSpec]:
        """Every rewriting pass in run order: stages in file order, passes in order within a stage."""
        for stage in self.stages:
            yield from (spec for spec in stage.passes if spec.name != DISTILL)

    def distill(self) -> PassSpec | None:
        """The training step that ends the recipe, if it has one."""
        last = self.stages[-1].passes[-1]
        return last if last.name == DISTILL else None

    def without_distill(self) -> Recipe:
        """A copy without the training step (what was done when it is skipped); a stage left empty goes too."""
        recipe = copy.deepcopy(self)
        for stage in recipe.stages:
            stage.passes = [spec for spec in stage.passes if spec.name != DISTILL]
        recipe.stages = [stage for stage in recipe.stages if stage.passes]
        return recipe

    # --- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, name_or_path: str | Path) -> Recipe:
        """A built-in recipe by name (`act`), or a YAML file by path."""
        name = str(name_or_path)
        if name in builtin_names():
            path, source = RECIPES_DIR / f"{name}.yaml", BUILTIN_PREFIX + name
        else:
            path, source = Path(name), name
            if not path.exists():
                raise RecipeError(f"{name}: no such recipe file, and not a built-in recipe name; built-in "
                                  f"recipes: {', '.join(builtin_names()) or 'none'}")
            if not path.is_file():
                raise RecipeError(f"{name}: is not a file; give a YAML recipe file or a built-in recipe name")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{name}: cannot read the recipe: {exc}") from None
        # errors name the file to fix: the user's own spelling of it, or where the built-in lies
        return _parse_yaml(text, source=source, label=name if source == name else str(path))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<recipe>") -> Recipe:
        """Parse and validate YAML text; `source` names it in error messages."""
        return _parse_yaml(text, source=source, label=source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<recipe>") -> Recipe:
        """Validate plain data shaped like the YAML (errors have no line numbers)."""
        try:
            return _Validator(source).recipe(Located.from_data(data), source)
        except RecursionError:
            raise RecipeError(f"{source}: the recipe is nested too deeply") from None

    # --- deriving --------------------------------------------------------------------------------------------
    def with_overrides(self, overrides: Sequence[str]) -> Recipe:
        """A copy with `--set`-style overrides applied in order (`act.rounds=16`, `compress_stage.act.cluster=keys`)."""
        recipe = copy.deepcopy(self)
        for override in overrides:
            recipe._apply_override(override)
        return recipe

    def with_plans(self, plans: Sequence[dict[str, dict[str, Any]] | None]) -> Recipe:
        """A copy whose passes carry `plans` (one per pass, in run order), as written into the resolved recipe."""
        specs = list(self.passes())
        if len(plans) != len(specs):
            raise ValueError(f"with_plans: {len(plans)} plans for {len(specs)} passes")
        validator = _Validator(self.source)
        recipe = copy.deepcopy(self)
        for spec, plan in zip(recipe.passes(), plans):
            spec.plan = validator.plan(Located.from_data(plan), f"{spec.stage}.{spec.name}.{PLAN_KEY}")
        return recipe

    def _apply_override(self, override: str) -> None:
        prefix = f"--set {override}"
        key, has_value, text = override.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not has_value or len(parts) not in (2, 3) or not all(parts):
            raise RecipeError(f"{prefix}: expected {OVERRIDE_FORMS}")
        spec = self._spec_for_override(prefix, parts)
        param_name = parts[-1]
        params = step_params(spec.name)
        if param_name not in params:
            raise RecipeError(f"{prefix}: {key}: {_unknown(f'{spec.name} parameter', param_name, params)}")
        try:
            value = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise RecipeError(f"{prefix}: the value is not a valid YAML scalar or flow list: "
                              f"{yaml_problem(exc)}") from None
        if not within_size(value):
            raise RecipeError(f"{prefix}: the value {TOO_LARGE}")
        try:
            spec.params[param_name] = _coerce(spec.name, param_name, value)
        except InvalidSetting as invalid:
            raise RecipeError(f"{prefix}: {key} {invalid.problem}") from None

    def _spec_for_override(self, prefix: str, parts: list[str]) -> PassSpec:
        """The pass an override key names: `[pass, param]` (if unambiguous) or `[stage, pass, param]`."""
        *stage_name, pass_name, param_name = parts
        stages = [stage for stage in self.stages if not stage_name or stage.name == stage_name[0]]
        if not stages:
            raise RecipeError(f"{prefix}: {_unknown('stage', stage_name[0], [s.name for s in self.stages])}")
        specs = [spec for stage in stages for spec in stage.passes if spec.name == pass_name]
        if not specs:
            scope = f"stage {stage_name[0]}" if stage_name else "the recipe"
            present = sorted({spec.name for stage in stages for spec in stage.passes})
            raise RecipeError(f"{prefix}: {scope} has no pass {pass_name!r}{_did_you_mean(pass_name, present)}; "
                              f"its passes: {', '.join(present)}")
        if len(specs) > 1:
            raise RecipeError(f"{prefix}: {pass_name} appears in several stages "
                              f"({', '.join(spec.stage for spec in specs)}); use <stage>.<pass>.<param>, "
                              f"e.g. {specs[0].stage}.{pass_name}.{param_name}")
        return specs[0]

    # --- writing ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain data: description first, every parameter of every pass, plans included."""
        data: dict[str, Any] = {"description": self.description}
        for stage in self.stages:
            data[stage.name] = {}
            for spec in stage.passes:
                entry = copy.deepcopy(spec.params)
                if spec.plan is not None:
                    entry[PLAN_KEY] = copy.deepcopy(spec.plan)
                data[stage.name][spec.name] = entry
        return data

    def to_yaml(self) -> str:
        """The resolved recipe as YAML that `from_yaml` reads back to an equal recipe."""
        return yaml_text(self.to_dict())


def builtin_names() -> list[str]:
    """The names `--recipe` accepts without a path: `recipes/<name>.yaml`."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def builtin_recipes() -> list[tuple[str, str, Path]]:
    """(name, description, path) of every built-in recipe, sorted by name; loading them also validates them."""
    return [(name, Recipe.load(name).description, RECIPES_DIR / f"{name}.yaml") for name in builtin_names()]


class _RecipeDumper(yaml.SafeDumper):
    """Block mappings for structure, flow lists for short lists of scalars: how people write recipes by hand."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(item, (list, tuple, dict)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_RecipeDumper.add_representer(list, _represent_list)


def yaml_text(data: Any) -> str:
    """`data` in the recipe YAML style (shared by `Recipe.to_yaml` and the generated docs)."""
    return yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                     width=120)


# --- checking one parameter value (shared by files and --set) -------------------------------------------------

def _coerce(step: str, name: str, value: Any) -> Any:
    """`value` checked against the schema of `step`'s parameter `name` and normalised, patterns included; or
    `InvalidSetting`."""
    value = check_setting(step, step_params(step), name, value)
    if name in PATTERN_PARAMS:
        _check_patterns(name, value)
    return value


def _check_patterns(name: str, patterns: list[str]) -> None:
    """Catch the pattern mistakes visible without a model: nothing targeted, empty names, broken regexes."""
    if name == "targets" and not patterns:
        raise InvalidSetting(f"expects at least one pattern ({AUTO}, a module name, a glob or {REGEX_PREFIX}<regex>), "
                       "got []; to skip a pass, remove it from the recipe")
    for index, pattern in enumerate(patterns):
        if not pattern.strip():
            raise InvalidSetting(f"expects non-empty patterns, got {pattern!r} at [{index}]", index)
        if name != "targets" and pattern == AUTO:
            raise InvalidSetting(f"got {AUTO!r} at [{index}], which is only meaningful in targets; use module names, "
                           f"globs or {REGEX_PREFIX}<regex>", index)
        if pattern.startswith(REGEX_PREFIX):
            try:
                re.compile(pattern[len(REGEX_PREFIX):])
            except re.error as exc:
                raise InvalidSetting(f"got {pattern!r} at [{index}], which is not a valid regular expression "
                               f"({exc}); write {REGEX_PREFIX}<Python regex>", index) from None


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown(kind: str, key: str, known: Sequence[str]) -> str:
    """"unknown <kind> 'x' (did you mean 'y'?); allowed: ..." for keys and names."""
    return f"unknown {kind} {key!r}{_did_you_mean(key, known)}; allowed: {', '.join(known) or 'none'}"


def _is_plan_scalar(value: Any) -> bool:
    """What YAML writes and reads back equal: no containers, objects or NaN."""
    return isinstance(value, PLAN_SCALARS) and not (isinstance(value, float) and math.isnan(value))


def _plain_scalar(value: Any) -> Any:
    """Subclasses (numpy's float64, str enums) as the built-in type, so the YAML dumper can write them."""
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return plain(value)
    return value


def _parse_yaml(text: str, source: str, label: str) -> Recipe:
    """Compose (never construct arbitrary objects), then validate with line numbers."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            raise RecipeError(f"{label}:1: the recipe is empty; expected a mapping with `description` and stages "
                              f"(top-level keys ending in {STAGE_SUFFIX}, e.g. compress_stage)")
        return _Validator(label).recipe(Located.from_yaml(root, label), source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{label}:{mark.line + 1}:" if mark else f"{label}:"
        raise RecipeError(f"{where} not valid YAML: {yaml_problem(exc)}") from None
    except RecursionError:
        raise RecipeError(f"{label}: the recipe is nested too deeply") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{label}: not valid YAML: {yaml_problem(exc)}") from None


# --- validation ----------------------------------------------------------------------------------------------

def _join(path: str, key: str) -> str:
    """A dotted path; keys that themselves contain dots (site names) are bracketed so the path stays readable."""
    if not path:
        return key
    if "." in key or not key or key != key.strip():
        return f"{path}[{key!r}]"
    return f"{path}.{key}"


def _describe_non_recipe(root: Located) -> str:
    """What a top level that is not a mapping holds: quoted when it is made of pass names (a recipe written as a
    list), otherwise only its kind, so that a file given by mistake is never printed."""
    value = root.plain()
    words = value if isinstance(value, list) else [value]
    if words and all(isinstance(word, str) and word in PASSES for word in words):
        return show_value(value)
    return "a list" if root.kind == "seq" else "a single value"


class _Validator:
    """Checks located recipe values against the pass registry, raising one-line `RecipeError`s."""

    def __init__(self, label: str):
        self.label = label

    def fail(self, node: Located | None, path: str, message: str, separator: str = ": ") -> NoReturn:
        where = f"{self.label}:{node.line}:" if node is not None and node.line is not None else f"{self.label}:"
        raise RecipeError(f"{where} {path}{separator}{message}" if path else f"{where} {message}")

    def entries(self, node: Located, path: str) -> list[tuple[str, Located, Located]]:
        """(key, key node, value node) of a mapping whose keys are strings, each appearing once."""
        first_line: dict[str, int | None] = {}
        entries = []
        for key_node, value_node in node.value:
            key = key_node.value
            if key_node.kind != "scalar" or not isinstance(key, str):
                self.fail(key_node, path or "top level",
                          f"keys must be strings, got {show_value(key_node.plain())}; quote it if it is a name")
            if key in first_line:
                earlier = f" (first at line {first_line[key]})" if first_line[key] is not None else ""
                self.fail(key_node, _join(path, key), f"duplicate key{earlier}; each key may appear once in a "
                                                      "mapping (YAML would silently keep only the last)")
            first_line[key] = key_node.line
            entries.append((key, key_node, value_node))
        return entries

    def recipe(self, root: Located, source: str) -> Recipe:
        # a file that is not a recipe at all (a credentials file, a config) is described, never quoted
        if root.kind != "map":
            self.fail(root, "", f"the recipe must be a mapping with `description` and stages (top-level keys "
                                f"ending in {STAGE_SUFFIX}), got {_describe_non_recipe(root)}")
        keys = [key.plain() for key, _ in root.value]
        if all(isinstance(key, str) for key in keys) and "description" not in keys and \
                not any(key.endswith(STAGE_SUFFIX) for key in keys):
            self.fail(root, "", f"this file is not a recipe: it has neither `description` nor a stage (a top-level "
                                f"key ending in {STAGE_SUFFIX}); give a built-in recipe name or a recipe file")
        description, stages = "", []
        for key, key_node, value in self.entries(root, ""):
            if key == "description":
                description = self.description(value)
            elif key.endswith(STAGE_SUFFIX):
                if not STAGE_NAME.fullmatch(key):
                    self.fail(key_node, key, "a stage name is letters, digits, `_` or `-` followed by "
                                             f"{STAGE_SUFFIX}, e.g. compress_stage")
                stages.append(self.stage(key, key_node, value))
            else:
                hint = _did_you_mean(key, ["description"]) or (
                    f" (a stage name must end in {STAGE_SUFFIX}, e.g. {key.rstrip('_')}{STAGE_SUFFIX})")
                self.fail(key_node, key, f"unknown top-level key{hint}; allowed: description, and stages (keys "
                                         f"ending in {STAGE_SUFFIX})")
        if not stages:
            self.fail(root, "", f"the recipe has no stage; add a top-level key ending in {STAGE_SUFFIX} with at "
                                f"least one pass, e.g. `compress_stage: {{{min(PASSES)}: {{}}}}`")
        self.check_distill_last(stages)
        return Recipe(description, stages, source)

    def check_distill_last(self, stages: list[Stage]) -> None:
        """Training comes once, after every pass: a pass after it would change what was trained."""
        steps = [spec for stage in stages for spec in stage.passes]
        trainings = [index for index, spec in enumerate(steps) if spec.name == DISTILL]
        if not trainings:
            return
        first = steps[trainings[0]]
        where = f"{self.label}:{first.line}:" if first.line is not None else f"{self.label}:"
        path = _join(first.stage, DISTILL)
        if len(trainings) > 1:
            raise RecipeError(f"{where} {path}: a recipe may distill once, at the end; remove the other "
                              f"{DISTILL} step ({steps[trainings[1]].stage})")
        if trainings[0] != len(steps) - 1:
            after = steps[trainings[0] + 1]
            raise RecipeError(f"{where} {path}: {DISTILL} must be the last step of the recipe, but "
                              f"{after.stage}.{after.name} comes after it; move the {DISTILL} step (or its stage) "
                              "to the end")
        if len(steps) == 1:
            raise RecipeError(f"{where} {path}: the recipe has no pass to distill after; add a stage of passes "
                              f"before it (known passes: {', '.join(sorted(PASSES))})")

    def description(self, node: Located) -> str:
        text = node.value if node.kind == "scalar" else None
        if not isinstance(text, str) or len(text.strip().splitlines()) > 1:
            self.fail(node, "description", f"expects one line of text, got {show_value(node.plain())}",
                      separator=" ")
        return text.strip()

    def stage(self, name: str, key_node: Located, node: Located) -> Stage:
        known = ", ".join(known_steps())
        if node.is_null() or (node.kind == "map" and not node.value):
            self.fail(key_node, name, f"the stage is empty; add at least one pass (known passes: {known})")
        if node.kind != "map":
            self.fail(node, name, f"a stage must be a mapping of pass names to their parameters (known passes: "
                                  f"{known}), got {show_value(node.plain())}")
        passes = []
        for pass_name, pass_key, pass_value in self.entries(node, name):
            if pass_name not in PASSES and pass_name != DISTILL:
                self.fail(pass_key, _join(name, pass_name), _unknown("pass", pass_name, known_steps()))
            passes.append(self.pass_spec(name, pass_name, pass_key, pass_value))
        return Stage(name, passes)

    def pass_spec(self, stage: str, name: str, key_node: Located, node: Located) -> PassSpec:
        """A pass's parameters with defaults filled in; `null` (or nothing) means all defaults."""
        path = _join(stage, name)
        params = step_params(name)
        values = {key: copy.deepcopy(param.default) for key, param in params.items()}
        plan = None
        if node.is_null():
            return PassSpec(stage, name, values, plan, key_node.line)
        if node.kind != "map":
            self.fail(node, path, f"expects a mapping of parameters (or nothing, for all defaults), got "
                                  f"{show_value(node.plain())}; {name} parameters: {', '.join(params)}")
        for key, param_key, value in self.entries(node, path):
            if key == PLAN_KEY and name != DISTILL:
                plan = self.plan(value, _join(path, key))
            elif key not in params:
                self.fail(param_key, _join(path, key),
                          _unknown(f"{name} parameter", key, [*params] + ([PLAN_KEY] * (name != DISTILL))))
            else:
                values[key] = self.param(name, key, value, _join(path, key))
        return PassSpec(stage, name, values, plan, key_node.line)

    def param(self, step: str, name: str, node: Located, path: str) -> Any:
        try:
            return _coerce(step, name, node.plain())
        except InvalidSetting as invalid:
            culprit = node.value[invalid.index] if invalid.index is not None and node.kind == "seq" else node
            self.fail(culprit, path, invalid.problem, separator=" ")

    def plan(self, node: Located, path: str) -> dict[str, dict[str, Any]] | None:
        """Only the plan's shape is checked here: {site: {setting: scalar}}; the pass interprets the rest."""
        if node.is_null():
            return None
        shape = "a mapping of site name to a mapping of settings (e.g. `encoder.layers.0.self_attn: " \
                "{bucket_width: 4.0}`)"
        if node.kind != "map":
            self.fail(node, path, f"expects {shape}, got {show_value(node.plain())}", separator=" ")
        plan = {}
        for site, _, settings_node in self.entries(node, path):
            site_path = _join(path, site)
            if settings_node.kind != "map":
                self.fail(settings_node, site_path, f"expects a mapping of setting name to value; {path} is "
                                                    f"{shape}, got {show_value(settings_node.plain())}", separator=" ")
            settings = {}
            for setting, _, value in self.entries(settings_node, site_path):
                if value.kind != "scalar" or not _is_plan_scalar(value.value):
                    self.fail(value, _join(site_path, setting), "expects a scalar (a string, number, true/false "
                                                                f"or null), got {show_value(value.plain())}",
                              separator=" ")
                settings[setting] = _plain_scalar(value.value)
            plan[site] = settings
        return plan
