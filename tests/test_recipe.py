"""Recipes: built-ins, defaults, `--set` overrides, one-line errors that point at the mistake, round trips, docs.

Pure Python and YAML: no model, no fixtures from conftest (run with --noconftest while those are being written).
"""

from __future__ import annotations

import random
import textwrap

import pytest
import yaml

from compressor import recipe_docs
from compressor.errors import RecipeError
from compressor.passes import PASSES
from compressor.recipe import RECIPES_DIR, Recipe, builtin_recipes, step_params

ACT = PASSES["act"]


def act_recipe(body: str = "", description: str = "test recipe") -> str:
    """A recipe whose line 4 onwards is `body`, indented as the act pass's parameters (line 3 is `act:`)."""
    return (f"description: {description}\ncompress_stage:\n  act:\n"
            + textwrap.indent(textwrap.dedent(body), "    "))


def error_of(text: str, source: str = "bad.yaml") -> str:
    """The message `text` fails with, checked to be a single line."""
    with pytest.raises(RecipeError) as caught:
        Recipe.from_yaml(text, source)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- built-ins and defaults ----------------------------------------------------------------------------------

def test_builtin_recipes_are_listed_sorted_and_all_load():
    entries = builtin_recipes()
    names = [name for name, _, _ in entries]
    assert names == sorted(names) and {"act", "act-calibrated"} <= set(names)
    for name, description, path in entries:
        recipe = Recipe.load(name)
        assert path == RECIPES_DIR / f"{name}.yaml" and path.is_file()
        assert description == recipe.description and description and "\n" not in description
        assert recipe.source == f"built-in:{name}"
        assert list(recipe.passes())


def test_builtin_act_resolves_every_parameter_to_its_default():
    (spec,) = Recipe.load("act").passes()
    assert (spec.stage, spec.name, spec.plan) == ("compress_stage", "act", None)
    assert spec.params == ACT.defaults()
    assert list(spec.params) == list(ACT.all_params())


def test_builtin_recipes_spell_out_every_parameter():
    for name, _, path in builtin_recipes():
        for stage_name, stage in yaml.safe_load(path.read_text()).items():
            if stage_name.endswith("_stage"):
                for pass_name, params in stage.items():
                    assert set(params) >= set(step_params(pass_name)), f"{name}: {pass_name}"


def test_act_calibrated_differs_from_act_only_in_fidelity_target_and_rounds():
    (plain,), (calibrated,) = Recipe.load("act").passes(), Recipe.load("act-calibrated").passes()
    assert calibrated.params == {**plain.params, "fidelity_target": 0.98, "rounds": 16}
    assert "--calib" in Recipe.load("act-calibrated").description


def test_a_pass_with_nothing_after_it_takes_every_default_as_a_private_copy():
    first, second = (next(Recipe.from_yaml(act_recipe()).passes()) for _ in range(2))
    assert first.params == ACT.defaults()
    first.params["targets"].append("changed")
    assert second.params["targets"] == ["auto"] and ACT.all_params()["targets"].default == ["auto"]


def test_an_int_is_accepted_for_a_float_and_a_string_for_a_list_of_strings():
    (spec,) = Recipe.from_yaml(act_recipe("bucket_width: 4\ntargets: auto\nbucket_widths: [1, 2.5]\n")).passes()
    assert spec.params["bucket_width"] == 4.0 and isinstance(spec.params["bucket_width"], float)
    assert spec.params["targets"] == ["auto"]
    assert [type(width) for width in spec.params["bucket_widths"]] == [float, float]


def test_stages_run_in_file_order_and_the_same_pass_may_appear_in_several():
    recipe = Recipe.from_yaml("later_stage:\n  act: {rounds: 4}\nearly_stage:\n  act:\n")
    assert [stage.name for stage in recipe.stages] == ["later_stage", "early_stage"]
    assert [(spec.stage, spec.params["rounds"], spec.line) for spec in recipe.passes()] == [
        ("later_stage", 4, 2), ("early_stage", 32, 4)]
    assert recipe.description == ""


# --- overrides -----------------------------------------------------------------------------------------------

def test_overrides_of_both_key_forms_apply_in_order_and_leave_the_original_alone():
    original = Recipe.load("act")
    changed = original.with_overrides(["act.rounds=16", "compress_stage.act.cluster=keys",
                                       "act.targets=[encoder.*, 're:decoder\\.']", "act.fidelity_target=null",
                                       "act.bucket_width=3", "act.rounds=8"])
    (spec,) = changed.passes()
    assert spec.params == {**ACT.defaults(), "rounds": 8, "cluster": "keys", "bucket_width": 3.0,
                           "targets": ["encoder.*", "re:decoder\\."]}
    assert next(original.passes()).params == ACT.defaults()
    assert changed.source == original.source


def test_overrides_are_type_checked_and_name_the_override():
    with pytest.raises(RecipeError) as caught:
        Recipe.load("act").with_overrides(["act.rounds=abc"])
    assert str(caught.value) == ("--set act.rounds=abc: act.rounds expects an integer >= 1 and <= 1024, "
                                 "got 'abc'")


@pytest.mark.parametrize("override, fragments", [
    ("act.rounds=true", ["act.rounds", "an integer >= 1", "got true"]),
    ("act.cluster=key", ["act.cluster", "one of queries, keys, both", "'key'"]),
    ("act.bucket_widths=[1, -2]", ["act.bucket_widths", "a list of numbers > 0", "-2 at [1]"]),
    ("act.targets=[]", ["act.targets", "at least one pattern"]),
    ("act.targets=re:(", ["act.targets", "'re:('", "not a valid regular expression"]),
    ("act.roundz=3", ["'roundz'", "did you mean 'rounds'", "allowed: targets, ignore, rounds"]),
    ("acts.rounds=3", ["'acts'", "did you mean 'act'", "its passes: act"]),
    ("other_stage.act.rounds=3", ["'other_stage'", "allowed: compress_stage"]),
    ("act.rounds", ["<pass>.<param>=<value>", "<stage>.<pass>.<param>=<value>"]),
    ("a.b.c.d=1", ["<pass>.<param>=<value>"]),
    ("act.targets=[a", ["not a valid YAML", "column"]),
    ("act.rounds=!!python/object:os.system x", ["not a valid YAML"]),
])
def test_bad_overrides_fail_with_one_line_naming_the_override(override, fragments):
    with pytest.raises(RecipeError) as caught:
        Recipe.load("act").with_overrides([override])
    message = str(caught.value)
    assert message.startswith(f"--set {override}:") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_a_pass_in_several_stages_needs_the_stage_in_its_override():
    recipe = Recipe.from_yaml("a_stage:\n  act:\nb_stage:\n  act:\n")
    with pytest.raises(RecipeError, match=r"act appears in several stages \(a_stage, b_stage\); use "
                                          r"<stage>\.<pass>\.<param>, e\.g\. a_stage\.act\.rounds"):
        recipe.with_overrides(["act.rounds=3"])
    assert [spec.params["rounds"] for spec in recipe.with_overrides(["b_stage.act.rounds=3"]).passes()] == [32, 3]


# --- errors --------------------------------------------------------------------------------------------------

ERROR_CASES = [
    # id, text, line, fragments the message must contain (the bad key or value, and what is allowed)
    ("not_yaml", act_recipe("rounds: [1,\n"), 5, ["not valid YAML", "column"]),
    ("two_documents", "description: a\n---\ndescription: b\n", 2, ["not valid YAML", "single document"]),
    ("top_level_list", "- act\n", 1, ["must be a mapping", "description", "_stage", "['act']"]),
    ("empty_document", "# only a comment\n", 1, ["empty", "description", "_stage"]),
    ("unknown_top_level_key", "description: a\nstages:\n  act:\n", 2,
     ["stages:", "unknown top-level key", "stages_stage", "allowed: description"]),
    ("misspelt_description", "descripton: a\ncompress_stage:\n  act:\n", 1,
     ["descripton:", "did you mean 'description'"]),
    ("no_stage", "description: a\n", 1, ["no stage", "_stage", "act"]),
    ("stage_not_a_mapping", "description: a\ncompress_stage: [act]\n", 2,
     ["compress_stage:", "mapping of pass names", "known passes: act", "['act']"]),
    ("empty_stage", "description: a\ncompress_stage:\n", 2, ["compress_stage:", "empty", "known passes: act"]),
    ("stage_name_with_a_dot", "my.compress_stage:\n  act:\n", 1, ["my.compress_stage:", "letters, digits"]),
    ("stage_without_a_name", "description: a\n_stage:\n  act:\n", 2, ["_stage:", "e.g. compress_stage"]),
    ("unknown_pass", "description: a\ncompress_stage:\n  actt:\n", 3,
     ["compress_stage.actt:", "unknown pass 'actt'", "did you mean 'act'", "allowed: act"]),
    ("pass_not_a_mapping", "description: a\ncompress_stage:\n  act: 32\n", 3,
     ["compress_stage.act:", "mapping of parameters", "got 32", "rounds"]),
    ("unknown_parameter", act_recipe("rounds: 3\nroundz: 3\n"), 5,
     ["compress_stage.act.roundz:", "did you mean 'rounds'", "allowed: targets, ignore, rounds", "plan"]),
    ("bool_for_int", act_recipe("rounds: yes\n"), 4, ["compress_stage.act.rounds", "an integer >= 1", "got true"]),
    ("float_for_int", act_recipe("rounds: 2.5\n"), 4, ["compress_stage.act.rounds", "an integer", "got 2.5"]),
    ("string_for_float", act_recipe("bucket_width: wide\n"), 4,
     ["compress_stage.act.bucket_width", "a number > 0", "got 'wide'"]),
    ("below_minimum", act_recipe("rounds: 0\n"), 4, ["compress_stage.act.rounds", ">= 1 and <= 1024", "got 0"]),
    ("at_exclusive_bound", act_recipe("bucket_width: 0\n"), 4, ["compress_stage.act.bucket_width", "> 0", "got 0"]),
    ("not_a_choice", act_recipe("\ncluster: query\n"), 5,
     ["compress_stage.act.cluster", "one of queries, keys, both", "got 'query'"]),
    ("nan_for_a_number", act_recipe("bucket_width: .nan\n"), 4, ["compress_stage.act.bucket_width", "got nan"]),
    ("null_where_not_nullable", act_recipe("rounds: null\n"), 4, ["compress_stage.act.rounds", "got null"]),
    ("out_of_range_nullable", act_recipe("fidelity_target: 1.5\n"), 4,
     ["compress_stage.act.fidelity_target", "<= 1, or null", "got 1.5"]),
    ("mapping_for_a_number", act_recipe("rounds: {a: 1}\n"), 4, ["compress_stage.act.rounds", "got a mapping"]),
    ("bad_list_item_points_at_the_item", act_recipe("bucket_widths:\n  - 1\n  - -2\n"), 6,
     ["compress_stage.act.bucket_widths", "a list of numbers > 0", "-2 at [1]"]),
    ("duplicate_parameter", act_recipe("rounds: 3\ncluster: keys\nrounds: 4\n"), 6,
     ["compress_stage.act.rounds:", "duplicate key", "first at line 4"]),
    ("duplicate_stage", "compress_stage:\n  act:\ncompress_stage:\n  act:\n", 3,
     ["compress_stage:", "duplicate key", "first at line 1"]),
    ("empty_targets", act_recipe("targets: []\n"), 4,
     ["compress_stage.act.targets", "at least one pattern", "auto", "re:<regex>"]),
    ("bad_regex_points_at_the_pattern", act_recipe("targets:\n  - auto\n  - 're:encoder.(['\n"), 6,
     ["compress_stage.act.targets", "'re:encoder.(['", "not a valid regular expression", "re:<Python regex>"]),
    ("auto_in_ignore", act_recipe("ignore: [auto]\n"), 4, ["compress_stage.act.ignore", "'auto'", "only", "targets"]),
    ("non_string_key", act_recipe("1: 2\n"), 4, ["compress_stage.act:", "keys must be strings", "got 1"]),
    ("plan_not_a_mapping", act_recipe("plan: [encoder]\n"), 4,
     ["compress_stage.act.plan", "site name to a mapping of settings", "['encoder']"]),
    ("plan_site_not_a_mapping", act_recipe("plan:\n  encoder.layers.0: 4\n"), 5,
     ["compress_stage.act.plan['encoder.layers.0']", "mapping of setting name", "got 4"]),
    ("plan_setting_not_a_scalar", act_recipe("plan:\n  encoder.layers.0:\n    bucket_width: [1, 2]\n"), 6,
     ["compress_stage.act.plan['encoder.layers.0'].bucket_width", "a scalar", "got [1, 2]"]),
    ("multi_line_description", "description: |\n  one\n  two\ncompress_stage:\n  act:\n", 1,
     ["description", "one line", "'one\\ntwo\\n'"]),
    ("unsafe_tag", act_recipe("rounds: !!python/object/apply:os.system [ls]\n"), 4,
     ["python/object/apply:os.system", "plain lists and mappings"]),
    ("merge_key", act_recipe("<<: {rounds: 3}\n"), 4, ["merge keys (<<)", "write the keys out"]),
    ("recursive_alias", act_recipe("targets: &loop [*loop]\n"), 4, ["recursive"]),
]


@pytest.mark.parametrize("text, line, fragments", [case[1:] for case in ERROR_CASES],
                         ids=[case[0] for case in ERROR_CASES])
def test_every_mistake_is_one_line_with_file_line_path_and_what_is_allowed(text, line, fragments):
    message = error_of(text, "recipes/mine.yaml")
    assert message.startswith(f"recipes/mine.yaml:{line}: "), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_errors_in_a_file_name_that_file(tmp_path):
    path = tmp_path / "my-recipe.yaml"
    path.write_text(act_recipe("rounds: lots\n"))
    with pytest.raises(RecipeError, match=rf"^{path}:4: compress_stage\.act\.rounds expects an integer"):
        Recipe.load(path)
    path.write_text(act_recipe("rounds: 5\n"))
    assert Recipe.load(str(path)).source == str(path) and next(Recipe.load(path).passes()).params["rounds"] == 5


def test_a_missing_recipe_says_so_and_lists_the_built_ins(tmp_path):
    with pytest.raises(RecipeError) as caught:
        Recipe.load(tmp_path / "nope.yaml")
    message = str(caught.value)
    assert f"{tmp_path / 'nope.yaml'}: no such recipe file" in message
    assert all(name in message for name, _, _ in builtin_recipes())
    with pytest.raises(RecipeError, match="is not a file"):
        Recipe.load(tmp_path)


def test_from_dict_validates_the_same_way_without_line_numbers():
    with pytest.raises(RecipeError, match=r"^mine: compress_stage\.act\.rounds expects an integer .* got 'x'$"):
        Recipe.from_dict({"compress_stage": {"act": {"rounds": "x"}}}, "mine")
    with pytest.raises(RecipeError, match=r"^mine: top level: keys must be strings"):
        Recipe.from_dict({3: {}}, "mine")
    from_data = Recipe.from_dict({"description": "test recipe", "compress_stage": {"act": {"rounds": 7}}})
    assert from_data == Recipe.from_yaml(act_recipe("rounds: 7"), "other")


# --- writing and round trips ---------------------------------------------------------------------------------

def test_to_yaml_is_resolved_ordered_block_style_and_reads_back_equal():
    recipe = Recipe.from_yaml("second_stage:\n  act: {rounds: 4}\ndescription: d\nfirst_stage:\n  act:\n")
    text = recipe.to_yaml()
    assert text.splitlines()[0] == "description: d"
    assert text.index("second_stage:") < text.index("first_stage:")
    assert "    targets: [auto]\n" in text and "{" not in text
    assert Recipe.from_yaml(text) == recipe
    assert recipe.to_dict() == yaml.safe_load(text)
    for spec in Recipe.from_yaml(text).passes():
        assert set(spec.params) == set(ACT.all_params())


def test_every_builtin_round_trips_through_to_yaml():
    for name, _, _ in builtin_recipes():
        recipe = Recipe.load(name)
        assert Recipe.from_yaml(recipe.to_yaml(), "resolved.yaml") == recipe


def test_plans_written_by_a_run_round_trip():
    plan = {"model.encoder.layers.0.self_attn": {"bucket_width": 4.0, "exact": False},
            "model.encoder.layers.1.self_attn": {"bucket_width": None, "note": "left exact"}}
    resolved = Recipe.load("act-calibrated").with_plans([plan])
    assert next(resolved.passes()).plan == plan and next(Recipe.load("act-calibrated").passes()).plan is None
    reloaded = Recipe.from_yaml(resolved.to_yaml(), "recipe.yaml")
    assert reloaded == resolved and next(reloaded.passes()).plan == plan
    assert reloaded != Recipe.load("act-calibrated")


def test_a_hand_written_plan_is_read_with_its_shape_checked():
    (spec,) = Recipe.from_yaml(act_recipe("plan:\n  encoder.layers.0: {bucket_width: 2}\n  encoder.layers.1: {}\n"))\
        .passes()
    assert spec.plan == {"encoder.layers.0": {"bucket_width": 2}, "encoder.layers.1": {}}


def test_with_plans_makes_numeric_subclasses_plain_and_rejects_objects():
    class Width(float):
        """Stands in for numpy.float64: a float subclass the YAML dumper cannot write."""

    resolved = Recipe.load("act").with_plans([{"site": {"bucket_width": Width(2.0)}}])
    assert type(next(resolved.passes()).plan["site"]["bucket_width"]) is float
    assert "bucket_width: 2.0" in resolved.to_yaml()
    with pytest.raises(RecipeError, match=r"compress_stage\.act\.plan\.site\.width expects a scalar"):
        Recipe.load("act").with_plans([{"site": {"width": object()}}])
    with pytest.raises(ValueError, match="2 plans for 1 passes"):
        Recipe.load("act").with_plans([{}, {}])


# --- fuzz ----------------------------------------------------------------------------------------------------

FUZZ_KEYS = ["description", "compress_stage", "later_stage", "_stage", "act", "actt", "targets", "ignore", "rounds",
             "bucket_width", "cluster", "fidelity_target", "bucket_widths", "plan", "encoder.layers.0", "x", 1, None,
             True, 2.5]
FUZZ_SCALARS = [None, True, False, 0, -1, 1, 32, 10 ** 30, 0.5, 8.0, -3.5, float("inf"), float("nan"), "",
                "auto", "queries", "keys", "re:(", "re:enc.*", "*.attn", "a: b", "- x", "[", "{", "&a", "*a", "!x",
                "é", "\t", "line\nbreak"]
FUZZ_NOISE = list(":-[]{},&*!|>'\"%@`#? \n\t") + ["  ", "\n  ", "<<: ", "!!python/name:os.system "]


def random_value(rng: random.Random, depth: int = 0):
    roll = rng.random()
    if depth >= 3 or roll < 0.45:
        return rng.choice(FUZZ_SCALARS)
    if roll < 0.7:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(FUZZ_KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def random_recipe(rng: random.Random):
    """A valid recipe with one random edit, so that the fuzz reaches deep into validation, or pure noise."""
    if rng.random() < 0.2:
        return random_value(rng)
    document = {"description": "fuzz", "compress_stage": {"act": {"rounds": 4, "targets": ["auto"],
                                                                  "plan": {"s": {"w": 1.0}}}}}
    mapping = document
    while rng.random() < 0.6:
        children = [value for value in mapping.values() if isinstance(value, dict)]
        if not children:
            break
        mapping = rng.choice(children)
    edit = rng.random()
    if edit < 0.3 and mapping:
        del mapping[rng.choice(list(mapping))]
    elif edit < 0.6 and mapping:
        mapping[rng.choice(list(mapping))] = random_value(rng, 1)
    else:
        mapping[rng.choice(FUZZ_KEYS)] = random_value(rng, 1)
    return document


def corrupt(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(text) + 1)
        text = text[:at] + rng.choice(FUZZ_NOISE) + text[at + rng.randint(0, 2):]
    return text


def test_random_documents_raise_only_one_line_recipe_errors():
    rng = random.Random(20240601)
    outcomes = {"valid": 0, "invalid": 0}
    for _ in range(200):
        document = random_recipe(rng)
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        if rng.random() < 0.3:
            text = corrupt(rng, text)
        for parse in (lambda: Recipe.from_yaml(text, "fuzz.yaml"), lambda: Recipe.from_dict(document, "fuzz.yaml")):
            try:
                recipe = parse()
            except RecipeError as error:
                assert str(error).startswith("fuzz.yaml:") and "\n" not in str(error), str(error)
                outcomes["invalid"] += 1
            else:
                assert Recipe.from_yaml(recipe.to_yaml(), "round-trip.yaml") == recipe
                outcomes["valid"] += 1
    assert outcomes["valid"] >= 20 and outcomes["invalid"] >= 100, outcomes


# --- docs ----------------------------------------------------------------------------------------------------

def test_docs_reference_is_in_sync_with_the_registry():
    _, generated, _ = recipe_docs.split_document(recipe_docs.DOC_PATH.read_text(encoding="utf-8"))
    assert generated == recipe_docs.render_reference(), "run `python -m compressor.recipe_docs --write`"


def test_reference_documents_every_parameter_of_every_pass_and_every_builtin():
    reference = recipe_docs.render_reference()
    for name, pass_class in PASSES.items():
        assert f"#### `{name}`" in reference and pass_class.summary in reference
        for param_name, param in pass_class.all_params().items():
            row = f"| `{param_name}` | {param.type} | `{recipe_docs.inline_yaml(param.default)}` | " \
                  f"{param.describe_allowed()} |"
            assert row in reference
    for name, description, _ in builtin_recipes():
        assert f"| `{name}` | {description} |" in reference


def test_docs_check_fails_on_a_stale_file_and_write_repairs_only_the_generated_part(tmp_path, capsys):
    stale = tmp_path / "recipes.md"
    stale.write_text(f"# Guide\n\nhand-written\n\n{recipe_docs.BEGIN}\nstale generated text\n{recipe_docs.END}\ntail\n")
    assert recipe_docs.main(["--check", "--path", str(stale)]) == 1
    assert recipe_docs.main(["--write", "--path", str(stale)]) == 0
    assert recipe_docs.main(["--check", "--path", str(stale)]) == 0
    text = stale.read_text()
    assert text.startswith("# Guide\n\nhand-written\n\n") and text.endswith(f"{recipe_docs.END}\ntail\n")
    assert "stale generated text" not in text and "#### `act`" in text
    assert recipe_docs.main(["--check"]) == 0
    capsys.readouterr()
