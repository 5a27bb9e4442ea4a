"""Which tokens token clipping keeps in the trained detector's encoder: the share of the feature-map cells objects
cover that stay after the first layer, for each ranking (`token_clip.importance`), on val canvases of CIFAR-10 test
photos with exact boxes (benchmarks/fixtures/detector-cifar-canvases/, stride 8: 32×32 cells at 256×256).

Measured through the pass itself (`compressor.compress`, `fuse: false`): a token that left after the first layer
still holds its first-layer state at the encoder's output. A random choice would keep `keep` of the object cells.

    python benchmarks/clip_object_coverage.py    # 40 canvases, keep 0.7 and 0.5, both rankings; ≈ 2 min
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import compressor  # noqa: E402
from compressor.sources import load_source  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "fixtures"))
import detector_canvases  # noqa: E402

DETECTOR = HERE / "fixtures" / "detector-cifar-canvases"
STRIDE, SIZE = 8, 256
RANKINGS = ("mean", "value_norm")


@torch.no_grad()
def encoder_states(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The first encoder layer's output and the encoder's output (tokens, channels) on one canvas."""
    outputs = model(**inputs, output_hidden_states=True)
    return outputs.encoder_hidden_states[1][0], outputs.encoder_last_hidden_state[0]


def val_canvases(directory: Path, count: int) -> tuple[list[dict], list[torch.Tensor], list[torch.Tensor]]:
    """The first `count` val canvases as model inputs, the cells objects cover on each (flattened bool map), and the
    original detector's first encoder layer output on each."""
    detector_canvases.write_coco_val(directory, count=count, size=SIZE)
    truth = json.loads((directory / "annotations" / "instances_val2017.json").read_text())
    original = load_source(DETECTOR)
    inputs, covered, first = [], [], []
    side = SIZE // STRIDE
    for image in truth["images"]:
        picture = Image.open(directory / "val2017" / image["file_name"]).convert("RGB")
        inputs.append(original.adapter.prepare_inputs([picture]))
        cells = torch.zeros(side, side, dtype=torch.bool)
        for x, y, width, height in (a["bbox"] for a in truth["annotations"] if a["image_id"] == image["id"]):
            cells[int(y) // STRIDE:-(-int(y + height) // STRIDE), int(x) // STRIDE:-(-int(x + width) // STRIDE)] = True
        covered.append(cells.flatten())
        first.append(encoder_states(original.model, inputs[-1])[0])
    return inputs, covered, first


def object_cells_kept(importance: str, keep: float, inputs, covered, first_layer_outputs) -> float:
    """The share of object cells that stay after the first encoder layer when clipping keeps `keep` of the tokens."""
    result = compressor.compress(DETECTOR, "token-clip", overrides=[f"token_clip.keep_ratio={keep}",
                                                                    "token_clip.fuse=false",
                                                                    f"token_clip.importance={importance}"],
                                 progress=False, latency_runs=1)
    kept = total = 0
    for one, cells, first in zip(inputs, covered, first_layer_outputs):
        last = encoder_states(result.model, one)[1]
        stayed = (last - first).abs().amax(dim=-1) > 1e-5  # a token that left still holds its first-layer state
        if int(stayed.sum()) != round(keep * len(stayed)):
            raise AssertionError(f"{int(stayed.sum())} tokens stayed, not {keep} of {len(stayed)}")
        kept += int((stayed & cells).sum())
        total += int(cells.sum())
    return kept / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canvases", type=int, default=40)
    parser.add_argument("--keep", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "clip_object_coverage.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = val_canvases(Path(scratch) / "val", args.canvases)
    results = {"detector": str(DETECTOR.relative_to(HERE.parent)), "canvases": args.canvases, "kept": {}}
    for importance in RANKINGS:
        for keep in args.keep:
            share = object_cells_kept(importance, keep, *data)
            results["kept"][f"{importance}, keep {keep}"] = round(share, 4)
            print(f"{importance:>10}, keep {keep}: {share:.3f} of the object cells stay", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
