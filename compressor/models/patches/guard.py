"""The guard on a host library's forward: refuse to patch a forward that is not the one a patch was written for.

A patch re-implements a host forward line for line (with the token reduction or the kernel call added). If a new
timm or transformers release changes that forward (a new normalisation, a moved residual, another argument), the
patch would keep computing the old block and the model would silently change. So each host forward is recorded
with the fingerprint of its source for the library versions the patch was checked against, and installing a patch
on a class whose forward has another fingerprint fails with one line naming the class, the installed version,
what changed and the version known to work.

The fingerprint is a hash of the forward's syntax tree without its docstring: comments, blank lines and
formatting do not count, every statement, argument and decorator does. Setting COMPRESSOR_UNCHECKED_PATCHES=1
skips the guard for users who accept that risk.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import os
import textwrap
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Callable

from compressor.errors import CompressorError

#: set to 1 to install patches on host forwards whose source differs from the recorded one (at your own risk)
SKIP_GUARD_VARIABLE = "COMPRESSOR_UNCHECKED_PATCHES"
#: set on every class a patch makes, so the guard looks past it to the host class it was made from
PATCHED_CLASS_MARKER = "_compressor_patch"


class HostChangedError(CompressorError):
    """A host library's forward differs from the one a patch was written against."""


def guard_skipped() -> bool:
    return os.environ.get(SKIP_GUARD_VARIABLE, "0").strip().lower() not in ("", "0", "false", "no", "off")


def unpatched_class(module_class: type) -> type:
    """The first class of `module_class`'s hierarchy that no patch made: the host class a patch was applied to."""
    return next(klass for klass in module_class.__mro__ if PATCHED_CLASS_MARKER not in vars(klass))


def _method(module_class: type, name: str) -> Callable:
    """`module_class.<name>` as the host defines it: patched classes are looked past."""
    return getattr(unpatched_class(module_class), name)


def source_fingerprint(function: Callable) -> str:
    """A hash of `function`'s syntax tree, docstring left out; "" when its source cannot be read."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return ""
    definition = tree.body[0]
    body = definition.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        definition.body = body[1:]
    return hashlib.sha256(ast.dump(definition).encode()).hexdigest()[:16]


def signature_text(function: Callable) -> str:
    """The parameters of `function` without annotations, e.g. "(self, x, attn_mask=None, is_causal=False)"."""
    parameters = [parameter.replace(annotation=inspect.Parameter.empty)
                  for parameter in inspect.signature(function).parameters.values()]
    return str(inspect.Signature(parameters))


def library_version(library: str) -> str:
    try:
        return version(library)
    except PackageNotFoundError:
        return "(version unknown)"


@dataclass(frozen=True)
class HostForward:
    """A host class whose `methods` (its forward, and helpers the forward delegates to) a patch replaces or
    re-implements, as recorded from the library versions the patch was checked against.

    `written_against` holds (library version, fingerprint of `methods` there) pairs, oldest first (see
    `fingerprint`); `signature` is the forward's parameters there.
    """

    library: str
    path: str  # "module:Class"
    signature: str
    written_against: tuple[tuple[str, str], ...]
    methods: tuple[str, ...] = ("forward",)

    @property
    def name(self) -> str:
        return self.path.replace(":", ".")

    def resolve(self) -> type:
        """The host class (importing its module, so only when a model of that library is being patched)."""
        module, _, name = self.path.partition(":")
        return getattr(importlib.import_module(module), name)

    def fingerprint(self, module_class: type) -> str:
        """The fingerprint of `methods` as `module_class` defines them (one hash per method, joined)."""
        return "+".join(source_fingerprint(_method(module_class, name)) for name in self.methods)

    def check(self, module_class: type) -> None:
        """Refuse `module_class` (the host class or a subclass) when its forward is not a recorded one."""
        if guard_skipped():
            return
        change = _change(module_class, self)
        if change is None:
            return
        known = [f"{self.library}=={known_version}" for known_version, _ in self.written_against]
        found = unpatched_class(module_class)
        subject = self.name if found is self.resolve() else f"{found.__qualname__} (a subclass of {self.name})"
        raise HostChangedError(
            f"cannot patch {subject}: {change} (the patch was written against {', '.join(known)}; installed: "
            f"{self.library} {library_version(self.library)}); install {known[-1]}, or set "
            f"{SKIP_GUARD_VARIABLE}=1 to install the patch anyway at your own risk")


@functools.cache
def _change(module_class: type, host: HostForward) -> str | None:
    """What differs in `module_class`'s forward from the recorded ones, or None when it is a recorded one."""
    found = host.fingerprint(module_class)
    if found in {fingerprint for _, fingerprint in host.written_against}:
        return None
    forward = _method(module_class, "forward")
    signature = signature_text(forward)
    if signature != host.signature:
        return f"its forward takes {signature} instead of {host.signature}"
    if "" in found.split("+"):
        return "its source cannot be read to check it"
    return "its " + " and ".join(f"{name}()" for name in host.methods) + " source changed"
