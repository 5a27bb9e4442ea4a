"""Shared fixtures: small local checkpoints of every family, the real assets in ../shared/data.

Tests never touch the network: HF_HUB_OFFLINE is set before anything imports huggingface_hub.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["checkpoints_hf", "checkpoints_timm", "checkpoints_compressed", "shared_assets",
                  "hub_servers"]
