"""Resolve a pass's `targets` / `ignore` patterns against the sites an adapter offers.

Patterns, as users of llm-compressor know them: `auto` (the pass's natural sites for the family), an exact module
name, a shell glob (`encoder.layers.*.self_attn`), or a regular expression prefixed with `re:` (matched from the
start of the name, like `re.match`). A pattern that selects nothing is an error, not a silent no-op.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Sequence

from compressor.errors import RecipeError
from compressor.passes.base import AUTO


def pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def _listing(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    more = len(names) - limit
    return shown + (f" (+{more} more)" if more > 0 else "") if names else "none"


def select_sites(pass_name: str, family: str, candidates: list, defaults: list, targets: Sequence[str],
                 ignore: Sequence[str]) -> list:
    """The candidate sites chosen by `targets` minus those matched by `ignore`, in model order."""
    names = [site.name for site in candidates]
    default_names = {site.name for site in defaults}
    chosen: set[str] = set()
    for pattern in targets:
        if pattern == AUTO:
            if not default_names:
                raise RecipeError(
                    f"{pass_name}.targets: `auto` finds no sites for {pass_name} in a {family} model; "
                    f"{pass_name} sites here: {_listing(names)}")
            chosen |= default_names
            continue
        matched = {n for n in names if pattern_matches(pattern, n)}
        if not matched:
            raise RecipeError(
                f"{pass_name}.targets: {pattern!r} matches no {pass_name} site in this {family} model; "
                f"sites are: {_listing(names)}")
        chosen |= matched
    for pattern in ignore:
        matched = {n for n in chosen if pattern_matches(pattern, n)}
        if not matched and not any(pattern_matches(pattern, n) for n in names):
            raise RecipeError(
                f"{pass_name}.ignore: {pattern!r} matches no {pass_name} site in this {family} model; "
                f"sites are: {_listing(names)}")
        chosen -= matched
    if not chosen:
        raise RecipeError(f"{pass_name}: `ignore` removes every target; nothing would be rewritten")
    return [site for site in candidates if site.name in chosen]
