"""Every forward of a host library (timm, transformers) that the toolkit replaces, one module per library, as
ToMe keeps `tome/patch/timm.py`.

A patch (`ForwardPatch`) swaps a module's class for a subclass running the patch's forward; a guard
(`HostForward`) refuses to install it when the host library's forward differs from the one the patch was written
against, naming the class, the installed version and the version known to work. COMPRESSOR_UNCHECKED_PATCHES=1
skips the guard. Neither library is imported here: host classes are resolved when a patch is installed.
"""

from __future__ import annotations

from compressor.models.patches import timm as timm_patches
from compressor.models.patches import transformers as transformers_patches
from compressor.models.patches.guard import SKIP_GUARD_VARIABLE, HostChangedError, HostForward, unpatched_class
from compressor.models.patches.patch import ForwardPatch

#: every patch the toolkit installs
PATCHES: tuple[ForwardPatch, ...] = timm_patches.PATCHES + transformers_patches.PATCHES
#: every host class a patch replaces or re-implements, once each
HOST_FORWARDS: tuple[HostForward, ...] = tuple(dict.fromkeys(host for patch in PATCHES for host in patch.hosts))

__all__ = ["ForwardPatch", "HOST_FORWARDS", "HostChangedError", "HostForward", "PATCHES", "SKIP_GUARD_VARIABLE",
           "unpatched_class"]
