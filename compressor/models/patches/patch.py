"""One replacement forward and the host forwards it was written against; installing it swaps a module's class.

Installing swaps the module's `__class__` to a subclass of its own class whose forward is the patch's (as ToMe
patches timm): parameters, names and the state-dict layout stay as they are. One subclass is made per host class,
so modules of the same class share it. Before the swap, the guard checks the forward being replaced and the
forwards of the submodules the patch re-implements inline (see `guard.HostForward`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from torch import nn

from compressor.errors import CompressorError
from compressor.models.patches.guard import PATCHED_CLASS_MARKER, HostForward, unpatched_class


def _host_among(module_class: type, hosts: tuple[HostForward, ...]) -> HostForward | None:
    """The host whose class `module_class` is (or derives from), looking past classes a patch made."""
    original = unpatched_class(module_class)
    return next((host for host in hosts if issubclass(original, host.resolve())), None)


@dataclass(frozen=True, eq=False)
class ForwardPatch:
    """`forward(module, *args, **kwargs)` replacing the forward of any class in `replaces`.

    `inlines` lists (submodule path, hosts) for each submodule whose forward the patch computes itself instead of
    calling the submodule (e.g. the attention inside a token-reducing block): its class must be one of those hosts,
    with a recorded forward. `prefix` names the subclasses ("TokenReducing" makes TokenReducingViTLayer).
    """

    prefix: str
    forward: Callable
    replaces: tuple[HostForward, ...]
    inlines: tuple[tuple[str, tuple[HostForward, ...]], ...] = ()

    @property
    def hosts(self) -> tuple[HostForward, ...]:
        return self.replaces + tuple(host for _, hosts in self.inlines for host in hosts)

    def applies_to(self, module_class: type) -> bool:
        return _host_among(module_class, self.replaces) is not None

    def check(self, module: nn.Module, name: str) -> None:
        """Refuse `module` (called `name` in messages) when it or an inlined submodule is not what the patch was
        written for: another class, or a host forward that has changed."""
        for path, hosts in (("", self.replaces), *self.inlines):
            part = module.get_submodule(path)
            host = _host_among(type(part), hosts)
            if host is None:
                where = f"{name}.{path}" if path else name
                expected = " or ".join(candidate.name for candidate in hosts)
                raise CompressorError(f"{where} is a {type(part).__name__}, but {self.forward.__name__} is written "
                                      f"for {expected} only; leave this module out of the pass's targets")
            host.check(type(part))

    def install(self, modules: dict[str, nn.Module]) -> None:
        """Make every module of `modules` (by name) run this patch's forward, once all of them pass `check`: a
        refusal leaves the model unchanged."""
        for name, module in modules.items():
            self.check(module, name)
        for module in modules.values():
            module.__class__ = self.patched_class(type(module))

    def patched_class(self, module_class: type) -> type:
        """The subclass of `module_class` (as it was before any patch) that runs this patch's forward, made once
        per class."""
        return _patched_class(self, unpatched_class(module_class))


@functools.cache
def _patched_class(patch: ForwardPatch, host_class: type) -> type:
    name = f"{patch.prefix}{host_class.__name__}"
    return type(name, (host_class,), {"forward": patch.forward, PATCHED_CLASS_MARKER: patch, "__qualname__": name,
                                      "__module__": patch.forward.__module__})
