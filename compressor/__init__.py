"""compressor: rewrite pretrained vision models into cheaper ones, measure the truth, publish.

The Python API mirrors the CLI::

    import compressor
    result = compressor.compress("facebook/detr-resnet-50", "act")    # load, rewrite, measure
    compressor.save(result, "detr-act")                                  # config, safetensors, recipe, report, card
    compressor.distill_and_save(result, "out", data="train.parquet")     # a recipe's distill step, instead of save
    model = compressor.load("detr-act")                                  # rebuild with identical outputs
    compressor.push_to_hub("detr-act", "my-org/detr-act")                # publish (token: HF_TOKEN / hf auth login)
    model = compressor.load("my-org/detr-act")                           # ... and load it back from the Hub
"""

from compressor.errors import CompressorError
from compressor.version import __version__


def __getattr__(name):
    """Import the heavy parts (torch, transformers, timm) only when they are used."""
    if name in ("compress", "CompressionResult"):
        from compressor import pipeline

        return getattr(pipeline, name)
    if name == "save":
        from compressor.serialization import save

        return save
    if name == "load":
        from compressor.sources import load

        return load
    if name == "distill_and_save":
        from compressor.distill.recipe_stage import distill_and_save

        return distill_and_save
    if name == "push_to_hub":
        from compressor.hub import push_to_hub

        return push_to_hub
    if name == "Recipe":
        from compressor.recipe import Recipe

        return Recipe
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")


__all__ = ["CompressorError", "CompressionResult", "Recipe", "compress", "distill_and_save", "load", "push_to_hub",
           "save", "__version__"]
