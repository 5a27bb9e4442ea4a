"""Small helpers tests use to look inside a forward pass."""

import torch


def input_of(module, model, inputs):
    """The first positional input `module` receives during a forward of `model` on `inputs`."""
    seen = []
    handle = module.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen[0]


def output_of(module, model, inputs):
    """What `module` returns during a forward of `model` on `inputs` (the first element, when it returns a tuple)."""
    seen = []
    handle = module.register_forward_hook(lambda _, args, out: seen.append(out))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    return seen[0][0] if isinstance(seen[0], tuple) else seen[0]
