"""Training throughput of `distill` against a plain PyTorch loop over the same student, teacher and data.

Student: the trained CIFAR ViT compressed with ACT (rounds 8); teacher: the original; data: CIFAR-10 train parquet
through the same DataLoader and collate. The plain loop is what one would write by hand (teacher forward under
no_grad, student forward, T²·KL + cross-entropy, backward, AdamW step); `distill` adds accelerate, the scheduler,
progress and logging. Runs alternate (plain, distill, plain, distill, ...) so both see the same machine drift;
the ratio compares the medians. `distill`'s figure is the images/s its own log reports for the training loop.

    python benchmarks/distill_throughput.py [--steps N] [--repeats R]
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

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"


def plain_loop(student_dir: Path, teacher_dir: Path, data, steps: int, batch_size: int) -> float:
    """Images per second of a hand-written distillation loop."""
    from torch.utils.data import DataLoader

    from compressor.distill.data import Collate, Examples
    from compressor.distill.losses import logits_kl
    from compressor.sources import load_source

    torch.manual_seed(0)
    student, teacher = load_source(student_dir), load_source(teacher_dir)
    model, reference = student.model.train(), teacher.model.eval().requires_grad_(False)
    loader = DataLoader(Examples(data), batch_size=batch_size, shuffle=True, drop_last=True,
                        collate_fn=Collate(student.adapter, data.task))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    started, done = time.perf_counter(), 0
    for inputs, labels in loader:
        with torch.no_grad():
            teacher_logits = reference(**inputs).logits
        logits = model(**inputs).logits
        loss = logits_kl(logits, teacher_logits, 2.0) + torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        done += 1
        if done == steps:
            break
    return done * batch_size / (time.perf_counter() - started)


def distill_loop(student_dir: Path, teacher_dir: Path, data, steps: int, batch_size: int, out: Path) -> float:
    from compressor.distill.trainer import Distiller, DistillConfig
    from compressor.sources import load_source

    config = DistillConfig(steps=steps, batch_size=batch_size, log_every=steps, checkpoint_every=steps)
    Distiller(load_source(student_dir), load_source(teacher_dir), data, out, config, progress=True).run()
    last = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()][-1]
    return last["images_per_second"]


def main() -> None:
    import compressor
    from compressor.data.loading import load_labelled

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "distill_throughput.json")
    args = parser.parse_args()
    teacher_dir = DATA / "vit-cifar10"
    data = load_labelled(str(DATA / "cifar10" / "train.parquet")).subset(args.steps * args.batch_size)
    with tempfile.TemporaryDirectory() as workdir:
        student_dir = compressor.save(compressor.compress(teacher_dir, "act", overrides=["act.rounds=8"],
                                                          progress=False, latency_runs=1), Path(workdir) / "student")
        plain, ours = [], []
        for repeat in range(args.repeats):
            plain.append(plain_loop(student_dir, teacher_dir, data, args.steps, args.batch_size))
            ours.append(distill_loop(student_dir, teacher_dir, data, args.steps, args.batch_size,
                                     Path(workdir) / f"run-{repeat}"))
            print(f"repeat {repeat}: plain {plain[-1]:.1f} img/s, distill {ours[-1]:.1f} img/s", flush=True)
    result = {"steps": args.steps, "batch_size": args.batch_size, "plain_images_per_second": plain,
              "distill_images_per_second": ours, "ratio_of_medians": statistics.median(ours) / statistics.median(plain),
              "pairwise_ratios": [o / p for o, p in zip(ours, plain)],
              "threads": torch.get_num_threads()}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
