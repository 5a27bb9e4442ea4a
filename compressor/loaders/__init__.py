"""Reading model files: the one Hub fetch and offline check, the one config.json reader, the transformers and timm
loaders, and `LoadedModel`, what they all return.

These modules import nothing of the toolkit above the adapters (`compressor.models`): `compressor.sources` picks
the loader for a user's source, and `compressor.serialization` rebuilds compressed outputs with them.
"""
