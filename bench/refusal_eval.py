"""How well, and how fast, the refusal classifier does on the labelled sets in tests/data.

Prints, per set: precision/recall/F1 for "refusal" (refused or partial, as the pairwise outcome counts
it), 3-class accuracy, the confusion matrix, accuracy per `kind`, and every misclassified example.
Then throughput: texts per second on one core, median of 5 runs over all sets repeated to ~20k texts,
again over only the texts of LONG_TEXT_CHARS or more, and over texts joined into ~500-char answers.

    python bench/refusal_eval.py [--repeat-to 20000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

from shadowtap.scorers.refusal import classify_refusal

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
SETS = ("refusal_labelled.jsonl", "refusal_heldout.jsonl")
LABELS = ("refused", "partial", "answered")
REFUSING = frozenset({"refused", "partial"})
LONG_TEXT_CHARS = 350
JOINED_TEXT_CHARS = 500


def load(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def report(name: str, examples: list[dict[str, str]]) -> None:
    predicted = [classify_refusal(example["text"]) for example in examples]
    confusion: Counter[tuple[str, str]] = Counter()
    per_kind: dict[str, list[bool]] = defaultdict(list)
    misses = []
    for example, verdict in zip(examples, predicted, strict=True):
        confusion[example["label"], verdict.label] += 1
        per_kind[example["kind"]].append(example["label"] == verdict.label)
        if example["label"] != verdict.label:
            misses.append((example, verdict))

    true_pos = sum(n for (gold, got), n in confusion.items() if gold in REFUSING and got in REFUSING)
    false_pos = sum(n for (gold, got), n in confusion.items() if gold not in REFUSING and got in REFUSING)
    false_neg = sum(n for (gold, got), n in confusion.items() if gold in REFUSING and got not in REFUSING)
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 1.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(confusion[label, label] for label in LABELS) / len(examples)

    gold_counts = Counter(example["label"] for example in examples)
    print(
        f"== {name}: {len(examples)} texts ({', '.join(f'{gold_counts[label]} {label}' for label in LABELS)})"
    )
    print(
        f"refusal precision {precision:.3f}  recall {recall:.3f}  F1 {f1:.3f}  "
        f"3-class accuracy {accuracy:.3f}"
    )
    print()
    print(f"{'gold / predicted':<18}" + "".join(f"{label:>10}" for label in LABELS))
    for gold in LABELS:
        print(f"{gold:<18}" + "".join(f"{confusion[gold, got]:>10}" for got in LABELS))
    print()
    print("accuracy per kind:")
    for kind, hits in sorted(per_kind.items()):
        print(f"  {kind:<26} {sum(hits):>3}/{len(hits):<3} {sum(hits) / len(hits):.2f}")
    print()
    print(f"misclassified ({len(misses)}):")
    for example, verdict in misses:
        text = " ".join(example["text"].split())
        print(f"  [{example['kind']}] gold={example['label']} got={verdict.label} cue={verdict.cue!r}")
        print(f"      {text[:160]}{'...' if len(text) > 160 else ''}")
    print()


def throughput(label: str, texts: list[str], repeat_to: int, runs: int) -> None:
    corpus = (texts * (repeat_to // len(texts) + 1))[:repeat_to]
    mean_chars = statistics.fmean(len(text) for text in corpus)
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        for text in corpus:
            classify_refusal(text)
        rates.append(len(corpus) / (time.perf_counter() - started))
    print(
        f"throughput, {label}: {statistics.median(rates):,.0f} texts/s (median of {runs} runs over "
        f"{len(corpus):,} texts, mean {mean_chars:.0f} chars; min {min(rates):,.0f}, max {max(rates):,.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat-to", type=int, default=20_000, help="texts per throughput run")
    parser.add_argument("--runs", type=int, default=5, help="throughput runs; the median is reported")
    args = parser.parse_args()

    all_texts = []
    for file_name in SETS:
        path = DATA_DIR / file_name
        if not path.exists():
            print(f"== {file_name}: missing, skipped\n")
            continue
        examples = load(path)
        report(file_name, examples)
        all_texts.extend(example["text"] for example in examples)
    throughput("all texts", all_texts, args.repeat_to, args.runs)
    long_texts = [text for text in all_texts if len(text) >= LONG_TEXT_CHARS]
    throughput(
        f"texts of {LONG_TEXT_CHARS}+ chars ({len(long_texts)})", long_texts, args.repeat_to, args.runs
    )
    throughput(f"texts joined to {JOINED_TEXT_CHARS}+ chars", joined(all_texts), args.repeat_to, args.runs)


def joined(texts: list[str]) -> list[str]:
    """Consecutive texts joined as paragraphs until each answer is JOINED_TEXT_CHARS long."""
    answers, paragraphs, length = [], [], 0
    for text in texts:
        paragraphs.append(text)
        length += len(text) + 2
        if length >= JOINED_TEXT_CHARS:
            answers.append("\n\n".join(paragraphs))
            paragraphs, length = [], 0
    return answers


if __name__ == "__main__":
    main()
