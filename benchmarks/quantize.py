"""int8 quantization (issue 18): file size, latency and accuracy of the `int8` recipe against the float model.

Parts (`--parts`, all by default), every ratio measured in this one run:

- `kernels`: the int8 matmul options on a ViT-B/16 MLP matmul at batch 8, one thread (torchao's too when it is
  installed);
- `cost`: full-size ViT-B/16, timm (`vit_base_patch16_224`) and HF (`ViTConfig()`), random weights: model.safetensors
  of the int8 output over the float output (both written by `compressor.save`), and latency at batch 8, one thread
  and two, timed interleaved (float, int8, tome, tome + int8);
- `vit`: the trained CIFAR ViT (`../shared/data/vit-cifar10`), top-1 on the whole CIFAR-10 test set, float and int8
  (dynamic activations, and weight-only);
- `minilm`: all-MiniLM-L6-v2, embedding cosine of int8 to float on the held-out passages
  (`benchmarks/data/paragraphs-eval.txt`);
- `resnet`: the real CIFAR ResNet-56, top-1 on the whole test set, float and int8 (Conv2d and Linear, weight-only
  convs).

    python benchmarks/quantize.py [--parts kernels cost vit minilm resnet] [--runs 5]   # writes benchmarks/results/quantize.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import compressor  # noqa: E402
from common import HERE, SHARED, VIT_CIFAR10, cifar_batches, minilm_batches, minilm_source  # noqa: E402
from compressor.evaluate.cost import interleaved_latency_ms  # noqa: E402
from compressor.ops.int8_linear import Int8Linear  # noqa: E402
from compressor.ops.int8_weights import quantize_per_channel  # noqa: E402
from compressor.sources import load_source  # noqa: E402

RESNET56 = SHARED / "resnet-cifar10" / "resnet56.safetensors"


def _compress(source, recipe: str, *overrides: str):
    return compressor.compress(str(source), recipe, progress=False, latency_runs=1, overrides=list(overrides))


def _full_size_checkpoints(root: Path) -> dict[str, Path]:
    """Random-weight ViT-B/16s in timm's and transformers' own layouts."""
    import timm
    from timm.models import save_for_hf
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    save_for_hf(timm.create_model("vit_base_patch16_224", pretrained=False).eval(), root / "timm",
                safe_serialization=True)
    ViTForImageClassification(ViTConfig()).eval().save_pretrained(root / "hf")
    return {"timm vit_base_patch16_224": root / "timm", "HF ViTConfig()": root / "hf"}


def cost(runs: int) -> dict:
    figures = {}
    with tempfile.TemporaryDirectory() as workdir:
        root = Path(workdir)
        for name, source in _full_size_checkpoints(root).items():
            models, sizes = {}, {}
            for label, recipe, overrides in (("float", "int8", ["quantize.bits=32"]), ("int8", "int8", []),
                                             ("tome", "tome", []), ("tome + int8", "tome-int8", [])):
                result = _compress(source, recipe, *overrides)
                out = compressor.save(result, root / f"{name}-{label}".replace(" ", "_"))
                sizes[label] = (out / "model.safetensors").stat().st_size
                models[label] = result.model.eval()
            inputs = load_source(source).adapter.example_inputs(batch_size=8, seed=0)
            entry = {"model.safetensors MB": {k: round(v / 1e6, 1) for k, v in sizes.items()},
                     "size ratio int8": round(sizes["int8"] / sizes["float"], 3)}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                times = dict(zip(models, interleaved_latency_ms(list(models.values()), inputs, runs=runs, warmup=1)))
                entry[f"latency ms, {threads} thread(s)"] = {k: round(v, 1) for k, v in times.items()}
                entry[f"latency ratio, {threads} thread(s)"] = {k: round(v / times["float"], 3)
                                                               for k, v in times.items() if k != "float"}
            torch.set_num_threads(1)
            figures[name] = entry
            print(name, json.dumps(entry, indent=1), flush=True)
            del models
    return figures


@torch.no_grad()
def _top1(model, batches, labels) -> float:
    predictions = torch.cat([model(**batch).logits.argmax(-1) for batch in batches])
    return round(float((predictions == labels).float().mean()), 4)


def vit() -> dict:
    batches, labels = cifar_batches(per_class=1000, batch_size=8)  # the whole test set (1,000 per class)
    float_model = load_source(VIT_CIFAR10).model.eval()
    figures = {"images": len(labels), "batch": 8, "float": _top1(float_model, batches, labels)}
    for label, overrides in (("int8 dynamic", []), ("int8 weight-only", ["quantize.activations=none"])):
        figures[label] = _top1(_compress(VIT_CIFAR10, "int8", *overrides).model.eval(), batches, labels)
        figures[f"{label} - float (points)"] = round(100 * (figures[label] - figures["float"]), 2)
    print("vit-cifar10", figures, flush=True)
    return figures


@torch.no_grad()
def minilm() -> dict:
    source = minilm_source()
    batches = minilm_batches(64)
    loaded = load_source(source)
    references = [loaded.adapter.primary_output(loaded.model(**batch), batch) for batch in batches]
    figures = {}
    for label, overrides in (("int8 dynamic", []), ("int8 weight-only", ["quantize.activations=none"])):
        quantized = _compress(source, "int8", *overrides)
        cosine = torch.cat([torch.nn.functional.cosine_similarity(
            quantized.loaded.adapter.primary_output(quantized.model(**batch), batch).flatten(1),
            reference.flatten(1), dim=-1) for batch, reference in zip(batches, references)])
        figures["passages"] = len(cosine)
        figures[label] = {"mean cosine": round(float(cosine.mean()), 4), "min cosine": round(float(cosine.min()), 4)}
    print("all-MiniLM-L6-v2", figures, flush=True)
    return figures


def resnet() -> dict:
    import datasets

    data = datasets.load_dataset("parquet", data_files=str(SHARED / "cifar10" / "test.parquet"), split="train")
    loaded = load_source(RESNET56)
    images, labels = [image.convert("RGB") for image in data["img"]], torch.tensor(data["label"])
    batches = [loaded.adapter.prepare_inputs(images[i:i + 250]) for i in range(0, len(images), 250)]
    quantized = _compress(RESNET56, "int8")
    figures = {"images": len(labels), "float": _top1(loaded.model.eval(), batches, labels),
               "int8": _top1(quantized.model.eval(), batches, labels)}
    figures["int8 - float (points)"] = round(100 * (figures["int8"] - figures["float"]), 2)
    times = interleaved_latency_ms([loaded.model, quantized.model], batches[0], runs=5)
    figures["latency ratio batch 250, 1 thread"] = round(times[1] / times[0], 3)
    print("resnet56", figures, flush=True)
    return figures


def _dynamic_linear(weight: torch.Tensor, bias: torch.Tensor, engine: str):
    """PyTorch's dynamic int8 linear with the weight packed by `engine` (per-channel int8)."""
    from compressor.ops.int8_weights import quiet_quantized_tensors

    quantized, scale = quantize_per_channel(weight)
    with quiet_quantized_tensors():
        packed_from = torch._make_per_channel_quantized_tensor(quantized, scale.reshape(-1).double(),
                                                                torch.zeros(len(scale), dtype=torch.long), 0)
    previous, torch.backends.quantized.engine = torch.backends.quantized.engine, engine
    packed = torch.ops.quantized.linear_prepack(packed_from, bias)
    torch.backends.quantized.engine = previous
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, False)


def _per_token_int_mm(weight: torch.Tensor, bias: torch.Tensor):
    """int8 × int8 → int32 with `torch._int_mm`, one activation scale per token (symmetric)."""
    quantized, scale = quantize_per_channel(weight)
    transposed = quantized.t().contiguous()

    def run(x):
        x_scale = x.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127
        x_int8 = torch.round(x / x_scale).clamp(-127, 127).to(torch.int8)
        return torch._int_mm(x_int8, transposed).float() * x_scale * scale.reshape(1, -1) + bias
    return run


@torch.no_grad()
def kernels(runs: int) -> dict:
    """The int8 matmul options on one ViT-B/16 MLP matmul (batch 8 × 197 tokens, 768 → 3072), one thread,
    interleaved: what `Int8Linear` uses is the fastest."""
    torch.manual_seed(0)
    x, weight, bias = torch.randn(8 * 197, 768), torch.randn(3072, 768) * 0.02, torch.randn(3072)
    layer_none = Int8Linear.from_float(_as_linear(weight, bias), activations="none").eval()
    options = {"float32 F.linear": lambda x: torch.nn.functional.linear(x, weight, bias),
               "weight-only int8 (dequantize + F.linear)": layer_none,
               "per-token torch._int_mm": _per_token_int_mm(weight, bias)}
    for engine in ("onednn", "x86", "fbgemm"):
        if engine in torch.backends.quantized.supported_engines:
            options[f"dynamic quantized::linear_dynamic ({engine})"] = _dynamic_linear(weight, bias, engine)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

        for label, config in (("torchao Int8DynamicActivationInt8WeightConfig", Int8DynamicActivationInt8WeightConfig()),
                              ("torchao Int8WeightOnlyConfig", Int8WeightOnlyConfig())):
            module = torch.nn.Sequential(_as_linear(weight, bias))
            quantize_(module, config)
            options[label] = module
    except ImportError:
        pass
    names = list(options)
    for name in names:
        options[name](x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(runs):
        for name in names:
            started = time.perf_counter()
            options[name](x)
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    figures = {name: {"ms": round(ms, 2), "ratio": round(ms / medians["float32 F.linear"], 3)}
               for name, ms in medians.items()}
    print("kernels", json.dumps(figures, indent=1), flush=True)
    return figures


def _as_linear(weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Linear:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
    linear.weight.data.copy_(weight)
    linear.bias.data.copy_(bias)
    return linear


PARTS = {"kernels": kernels, "cost": cost, "vit": vit, "minilm": minilm, "resnet": resnet}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "quantize.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    figures = {"machine": "2 cores shared with a niced training run and other agents (loaded)"}
    for part in args.parts:
        figures[part] = PARTS[part](args.runs) if part in ("kernels", "cost") else PARTS[part]()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.write_text(json.dumps({**previous, **figures}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
