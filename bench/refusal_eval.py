"""How well, and how fast, the refusal detectors do: the learned detector (shipped weights), the cue
grammar, and a plain "starts with a refusal phrase" baseline, side by side.

Prints, for "refusing" (refused or partial, as the pairwise outcome counts it): precision, recall and
F1 with 95% intervals (Wilson for precision and recall, bootstrap for F1) and the 3-class confusion
matrix of the learned detector,
  1. per source, on its held-out part (never used in training or in choosing any setting);
  2. leave one source out: the detector retrained on the other sources' training parts, tested on the
     whole of the source left out (needs the `train` extra; skipped without it);
  3. on the non-English answers, the same two ways;
then throughput on ~600-character answers (median of --runs runs, in this process's CPU time, so one
core's rate): the cue grammar alone, and the learned detector (which runs the cue grammar first, as its
features include the cue's verdict).

Third-party sources are read from --data (see bench/train_refusal.py); without it only the sets in
tests/data are used.

    python bench/refusal_eval.py [--data /tmp/refusal-data] [--runs 5] [--answers 5000] [--misses]
                                 [--exclude SOURCE ...]

--misses also lists the held-out answers the shipped detector gets wrong (refusing against answered).
--exclude leaves a source out of everything (what leave-one-source-out retrains on, too), to show what
it adds: e.g. `--exclude shadowtap-deflection` gives the figures from before that set.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_refusal import Example, fit, load_examples  # noqa: E402

from shadowtap.scorers.refusal import classify_refusal, detect_refusal  # noqa: E402
from shadowtap.scorers.refusal_model import CLASSES, LinearRefusalModel, load_model  # noqa: E402

REFUSING = frozenset({"refused", "partial"})
Z95 = 1.959964
BOOTSTRAP_SAMPLES = 1000
# A source is large enough to measure on its own with this many answers of each side.
MIN_PER_SIDE = 50
SPEED_CHARS = 600
# Twenty openings a refusal commonly starts with: the baseline to beat.
REFUSAL_OPENINGS = (
    "i'm sorry",
    "i am sorry",
    "sorry",
    "i apologize",
    "i apologise",
    "my apologies",
    "as an ai",
    "as a language model",
    "as an assistant",
    "i cannot",
    "i can't",
    "i can not",
    "i'm not able",
    "i am not able",
    "i'm unable",
    "i am unable",
    "i won't",
    "i will not",
    "unfortunately",
    "i must decline",
)

Predictor = Callable[[str], str]


def starts_with_refusal(text: str) -> str:
    opening = text.lstrip(" \n\t#*_>\"'").lower().replace("\u2019", "'")
    return "refused" if opening.startswith(REFUSAL_OPENINGS) else "answered"


def cues(text: str) -> str:
    return classify_refusal(text).label


def learned_with(model: LinearRefusalModel) -> Predictor:
    def predict(text: str) -> str:
        verdict = classify_refusal(text)
        return model.predict(text, verdict.label, verdict.language).label

    return predict


def wilson(hits: int, total: int) -> tuple[float, float]:
    if total == 0:
        return (0.0, 1.0)
    p = hits / total
    centre = (p + Z95**2 / (2 * total)) / (1 + Z95**2 / total)
    half = Z95 * math.sqrt(p * (1 - p) / total + Z95**2 / (4 * total**2)) / (1 + Z95**2 / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def f1_of(gold: np.ndarray, got: np.ndarray) -> float:
    true_pos = float(np.sum(gold & got))
    denominator = float(np.sum(gold) + np.sum(got))
    return 2 * true_pos / denominator if denominator else 1.0


def f1_interval(gold: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    rng = np.random.default_rng(15)
    picks = rng.integers(0, len(gold), size=(BOOTSTRAP_SAMPLES, len(gold)))
    values = sorted(f1_of(gold[pick], got[pick]) for pick in picks)
    return (values[int(0.025 * BOOTSTRAP_SAMPLES)], values[int(0.975 * BOOTSTRAP_SAMPLES) - 1])


def row(name: str, detector: str, examples: Sequence[Example], predicted: Sequence[str]) -> str:
    gold = np.array([e.label in REFUSING for e in examples])
    got = np.array([label in REFUSING for label in predicted])
    true_pos, false_pos, false_neg = (
        int(np.sum(gold & got)),
        int(np.sum(~gold & got)),
        int(np.sum(gold & ~got)),
    )
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 1.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 1.0
    p_low, p_high = wilson(true_pos, true_pos + false_pos)
    r_low, r_high = wilson(true_pos, true_pos + false_neg)
    f_low, f_high = f1_interval(gold, got)
    return (
        f"{name:<20} {len(examples):>5} {detector:<12} "
        f"{precision:.3f} [{p_low:.2f}-{p_high:.2f}]  {recall:.3f} [{r_low:.2f}-{r_high:.2f}]  "
        f"{f1_of(gold, got):.3f} [{f_low:.2f}-{f_high:.2f}]"
    )


HEADER = f"{'source':<20} {'n':>5} {'detector':<12} {'precision [95%]':<19} {'recall [95%]':<19} F1 [95%]"


def confusion(examples: Sequence[Example], predicted: Sequence[str]) -> str:
    counts = Counter((e.label, label) for e, label in zip(examples, predicted, strict=True))
    lines = ["    gold \\ got " + "".join(f"{label:>10}" for label in CLASSES)]
    for gold in CLASSES:
        lines.append(f"    {gold:<11}" + "".join(f"{counts[gold, got]:>10}" for got in CLASSES))
    return "\n".join(lines)


def compare(name: str, examples: Sequence[Example], learned: Predictor, show_confusion: bool = True) -> None:
    texts = [e.text for e in examples]
    predictions = {
        "learned": [learned(text) for text in texts],
        "cues": [cues(text) for text in texts],
        "starts-with": [starts_with_refusal(text) for text in texts],
    }
    for detector, predicted in predictions.items():
        print(row(name, detector, examples, predicted))
    if show_confusion:
        print(confusion(examples, predictions["learned"]))


def by_source(examples: Sequence[Example]) -> dict[str, list[Example]]:
    sources: dict[str, list[Example]] = {}
    for example in examples:
        sources.setdefault(example.source, []).append(example)
    return sources


def large_enough(examples: Sequence[Example]) -> bool:
    refusing = sum(e.label in REFUSING for e in examples)
    return refusing >= MIN_PER_SIDE and len(examples) - refusing >= MIN_PER_SIDE


def held_out_table(examples: Sequence[Example]) -> None:
    print("== 1. per source, held-out part, shipped weights")
    print(HEADER)
    learned = learned_with(load_model())
    for name, items in by_source(examples).items():
        compare(name, [e for e in items if e.held_out], learned)
    compare("all sources", [e for e in examples if e.held_out], learned)
    print()


def non_english(examples: Sequence[Example]) -> list[Example]:
    return [e for e in examples if "multilingual" in e.kind and not e.kind.endswith("_en")]


def leave_one_source_out(examples: Sequence[Example]) -> None:
    print(f"== 2. leave one source out (sources with {MIN_PER_SIDE}+ refusing and {MIN_PER_SIDE}+ answered)")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("skipped: needs scikit-learn (pip install -e '.[train]')\n")
        return
    print(HEADER)
    sources = by_source(examples)
    for name, items in sources.items():
        if not large_enough(items):
            print(f"{name:<20} {len(items):>5} too small to measure on its own")
            continue
        training = [e for e in examples if e.source != name and not e.held_out]
        model = LinearRefusalModel(*fit(training), meta={})
        compare(name, items, learned_with(model))
        foreign = non_english(items)
        if foreign:
            print(f"  of which non-English ({len(foreign)}):")
            compare(name + " non-en", foreign, learned_with(model), show_confusion=False)
    print()


def print_misses(examples: Sequence[Example]) -> None:
    print("== held-out answers the shipped detector gets wrong (refusing against answered)")
    for example in examples:
        detection = detect_refusal(example.text)
        if (detection.label in REFUSING) != (example.label in REFUSING):
            text = " ".join(example.text.split())
            print(
                f"  [{example.source} {example.kind}] gold={example.label} got={detection.label} "
                f"p={detection.refusing:.2f} features={list(detection.top_features)}"
            )
            print(f"      {text[:160]}{'...' if len(text) > 160 else ''}")
    print()


def speed_corpus(examples: Sequence[Example], answers: int) -> list[str]:
    """Answers of about SPEED_CHARS characters: longer texts cut at a word, shorter ones joined."""
    corpus: list[str] = []
    parts: list[str] = []
    while examples and len(corpus) < answers:
        for example in examples:
            parts.append(example.text)
            joined = "\n\n".join(parts)
            if len(joined) >= SPEED_CHARS:
                corpus.append(joined[:SPEED_CHARS].rsplit(" ", 1)[0])
                parts = []
                if len(corpus) == answers:
                    break
    return corpus


def throughput(label: str, predict: Callable[[str], object], corpus: Sequence[str], runs: int) -> None:
    rates = []
    for _ in range(runs):
        # CPU time of this process: answers per second of one core, however busy the machine's others are.
        started = time.process_time()
        for text in corpus:
            predict(text)
        rates.append(len(corpus) / (time.process_time() - started))
    mean_chars = statistics.fmean(len(text) for text in corpus)
    print(
        f"throughput, {label}: {statistics.median(rates):,.0f} answers/s on one core (median of {runs} runs "
        f"over {len(corpus):,} answers, mean {mean_chars:.0f} chars; min {min(rates):,.0f}, max {max(rates):,.0f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder holding the third-party sources")
    parser.add_argument("--runs", type=int, default=5, help="throughput runs; the median is reported")
    parser.add_argument("--answers", type=int, default=5000, help="answers per throughput run")
    parser.add_argument("--misses", action="store_true", help="list the held-out answers it gets wrong")
    parser.add_argument(
        "--exclude", nargs="+", default=[], metavar="SOURCE", help="leave these sources out of everything"
    )
    args = parser.parse_args()

    everything = load_examples(args.data)
    unknown = set(args.exclude) - {e.source for e in everything}
    if unknown:
        parser.error(f"--exclude: no such source {', '.join(sorted(unknown))}")
    examples = [e for e in everything if e.source not in args.exclude]
    counts = {name: dict(Counter(e.label for e in items)) for name, items in by_source(examples).items()}
    print(f"sources: {counts}\n")
    held_out_table(examples)
    leave_one_source_out(examples)
    foreign = [e for e in non_english(examples) if e.held_out]
    print(f"== 3. non-English answers in the held-out parts ({len(foreign)}), shipped weights")
    print(HEADER)
    compare("non-English", foreign, learned_with(load_model()), show_confusion=False)
    print()

    if args.misses:
        print_misses([e for e in examples if e.held_out])

    print(f"== 4. speed on ~{SPEED_CHARS}-character answers")
    corpus = speed_corpus(examples, args.answers)
    load_model()
    throughput("cue grammar", classify_refusal, corpus, args.runs)
    throughput("learned detector (cue grammar included)", detect_refusal, corpus, args.runs)


if __name__ == "__main__":
    main()
