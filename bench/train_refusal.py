"""Trains the learned refusal detector and writes its weights and checksum into the package.

Sources (docs/refusal-detector.md is their data card): the labelled sets in tests/data, written for
this project, and third-party sets read from a local folder given with --data (never committed):

    DATA/safety-rbr-code-and-data   a clone of github.com/openai/safety-rbr-code-and-data (MIT)

Each source is split once, by a hash of the answer's text, into a training part and a held-out part
(HELD_OUT_SHARE); the held-out parts are never used for training or for choosing any setting, so
bench/refusal_eval.py can report on them. Needs the `train` extra (scikit-learn):

    pip install -e '.[train]'
    python bench/train_refusal.py --data /tmp/refusal-data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shadowtap.scorers.refusal import classify_refusal
from shadowtap.scorers.refusal_model import CLASSES, WEIGHTS_PATH, feature_names, save_model

REPO = Path(__file__).resolve().parent.parent
TESTS_DATA = REPO / "tests" / "data"
HELD_OUT_SHARE = 0.25
MIN_FEATURE_COUNT = 3
# Chosen by leave-one-source-out over the training parts only (0.25 to 8 all within 0.02 of F1).
REGULARISATION_C = 1.0
RBR_DIR = "safety-rbr-code-and-data"
IN_REPO_SOURCES = {
    "shadowtap-labelled": "refusal_labelled.jsonl",
    "shadowtap-heldout": "refusal_heldout.jsonl",
    "shadowtap-written": "refusal_written.jsonl",
    "shadowtap-deflection": "refusal_deflection.jsonl",
}


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled answer: its text, gold label (refused / partial / answered), source and kind."""

    text: str
    label: str
    source: str
    kind: str

    @property
    def held_out(self) -> bool:
        """In the source's held-out part: fixed by the text alone, so every run agrees."""
        digest = hashlib.sha256(self.text.encode("utf-8")).digest()
        return int.from_bytes(digest[:4], "big") / 2**32 < HELD_OUT_SHARE


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def in_repo_examples() -> list[Example]:
    """The hand-written, hand-labelled sets in tests/data."""
    examples = []
    for source, file_name in IN_REPO_SOURCES.items():
        for row in _read_jsonl(TESTS_DATA / file_name):
            examples.append(Example(str(row["text"]), str(row["label"]), source, str(row["kind"])))
    return examples


def rbr_label(propositions: dict[str, bool]) -> str:
    """OpenAI's RBR gold set: human raters marked whether a completion fully or partially complies.
    Fully complies: answered; partially (not fully): partial; neither: refused (declines, deflects or
    only redirects)."""
    if propositions.get("fully_complies"):
        return "answered"
    if propositions.get("partially_complies"):
        return "partial"
    return "refused"


def rbr_examples(data_dir: Path) -> list[Example]:
    """The RBR gold set's completions (train and test files alike), labelled by its human raters."""
    folder = data_dir / RBR_DIR / "data" / "rbr_gold_data"
    examples = []
    for file_name in ("train.jsonl", "test.jsonl"):
        for row in _read_jsonl(folder / file_name):
            completion = row["completion"]
            assert isinstance(completion, list) and completion, "an RBR row without a completion"
            text = str(completion[-1]["content"])
            propositions = row["propositions"]
            assert isinstance(propositions, dict)
            kind = f"rbr_{str(row['response_type']).lower().replace(' ', '_')}"
            examples.append(Example(text, rbr_label(propositions), "openai-rbr-gold", kind))
    return examples


def source_commit(data_dir: Path, name: str) -> str | None:
    """The commit of a cloned source, for the data card and the weights' metadata."""
    try:
        result = subprocess.run(
            ["git", "-C", str(data_dir / name), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


def load_examples(data_dir: Path | None) -> list[Example]:
    """Every source there is, each answer once (the first source to hold a text keeps it)."""
    examples = in_repo_examples()
    if data_dir is not None:
        if not (data_dir / RBR_DIR).is_dir():
            raise SystemExit(f"--data {data_dir}: no {RBR_DIR} folder (clone the source there)")
        examples.extend(rbr_examples(data_dir))
    seen: set[str] = set()
    unique = []
    for example in examples:
        if example.text.strip() and example.text not in seen:
            seen.add(example.text)
            unique.append(example)
    return unique


def features_of(example_texts: Iterable[str]) -> list[set[str]]:
    """The detector's features, with the cue grammar's verdict among them, exactly as at inference."""
    result = []
    for text in example_texts:
        verdict = classify_refusal(text)
        result.append(feature_names(text, verdict.label, verdict.language))
    return result


def fit(examples: list[Example]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Multinomial logistic regression on binary features seen at least MIN_FEATURE_COUNT times."""
    from scipy.sparse import csr_matrix
    from sklearn.linear_model import LogisticRegression

    rows = features_of(example.text for example in examples)
    counts = Counter(name for names in rows for name in names)
    vocabulary = sorted(name for name, count in counts.items() if count >= MIN_FEATURE_COUNT)
    index = {name: i for i, name in enumerate(vocabulary)}
    indptr, indices = [0], []
    for names in rows:
        indices.extend(sorted(index[name] for name in names if name in index))
        indptr.append(len(indices))
    matrix = csr_matrix(
        (np.ones(len(indices), dtype=np.float64), indices, indptr), shape=(len(rows), len(vocabulary))
    )
    target = np.array([CLASSES.index(example.label) for example in examples])  # type: ignore[arg-type]
    model = LogisticRegression(C=REGULARISATION_C, max_iter=5000, class_weight="balanced")
    model.fit(matrix, target)
    # Columns in CLASSES order, whatever order the classifier kept them in.
    order = [list(model.classes_).index(i) for i in range(len(CLASSES))]
    weights = model.coef_.T[:, order].astype(np.float32)
    bias = model.intercept_[order].astype(np.float32)
    return vocabulary, weights, bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, help="folder holding the third-party sources (see the docstring)"
    )
    parser.add_argument("--output", type=Path, default=WEIGHTS_PATH, help="where to write the weights")
    args = parser.parse_args()

    examples = load_examples(args.data)
    training = [example for example in examples if not example.held_out]
    vocabulary, weights, bias = fit(training)
    meta = {
        "classes": list(CLASSES),
        "training_counts": {
            source: dict(Counter(e.label for e in training if e.source == source))
            for source in sorted({e.source for e in training})
        },
        "held_out_share": HELD_OUT_SHARE,
        "regularisation_c": REGULARISATION_C,
        "sources": {RBR_DIR: source_commit(args.data, RBR_DIR)} if args.data else {},
    }
    digest = save_model(args.output, vocabulary, weights, bias, meta)
    size = args.output.stat().st_size
    print(
        f"trained on {len(training)} answers ({len(examples) - len(training)} held out), {len(vocabulary)} features"
    )
    print(json.dumps(meta["training_counts"], sort_keys=True))
    print(f"wrote {args.output} ({size / 1024:.0f} KiB), sha256 {digest}")


if __name__ == "__main__":
    sys.exit(main())
