"""Reading model files: the Hub fetch and offline check, config.json, and the transformers and timm loaders.

Everything here sits below the adapters' registry users and above nothing but `compressor.errors`,
`compressor.models` and the host libraries; `compressor.sources` picks among these loaders for a user's source,
and `compressor.serialization` rebuilds compressed outputs with them.
"""
