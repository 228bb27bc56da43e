"""The learned refusal detector: a linear model over word n-grams, opening n-grams, a few character
n-grams of the opening and the cue grammar's verdict, giving refused / partial / answered with a
probability.

Inference is numpy only. The weights ship in the package (`weights/refusal_linear.npz`) beside their
sha256 (`weights/refusal_linear.npz.sha256`), which is checked when they are loaded; nothing is
downloaded. `bench/train_refusal.py` trains them (scikit-learn, the `train` extra) and writes both.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from shadowtap.errors import ShadowtapError

__all__ = [
    "CLASSES",
    "LinearRefusalModel",
    "ModelError",
    "RefusalPrediction",
    "WEIGHTS_PATH",
    "feature_names",
    "load_model",
    "read_model",
    "save_model",
]

Label = Literal["refused", "partial", "answered"]
CLASSES: tuple[Label, Label, Label] = ("refused", "partial", "answered")
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "refusal_linear.npz"

# Only this much of an answer is read: a refusal shows itself early, and the cost stays bounded.
HEAD_CHARS = 1000
OPENING_TOKENS = 12
OPENING_CHARS = 48
CHAR_NGRAM_SIZES = (4,)

_TYPOGRAPHIC = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[?!:]")
_LIST_LINE = re.compile(r"(?m)^[ \t]*(?:[-*\u2022]|\d{1,2}[.)])[ \t]+\S")
_LEADING_MARKUP = re.compile(r"\A[\s#*_>]*")


class ModelError(ShadowtapError):
    """The shipped detector weights are missing, altered (checksum mismatch) or unreadable."""


@dataclass(frozen=True, slots=True)
class RefusalPrediction:
    """The detector's view of one answer: its label, P(refused or partial), and each class's probability."""

    label: Label
    refusing: float
    probabilities: dict[str, float]
    top_features: tuple[str, ...]


def feature_names(text: str, cue_label: str, cue_language: str | None) -> set[str]:
    """The binary features of one answer. Training and inference both call this, so they cannot drift."""
    head = text[:HEAD_CHARS]
    if not head.isascii():
        head = head.translate(_TYPOGRAPHIC)
    head = head.lower()
    lead = _LEADING_MARKUP.match(head)
    if lead:
        head = head[lead.end() :]
    tokens = _TOKEN.findall(head)
    # Words and word pairs are named bare ("sorry", "i can't"): no token holds a space or a letter
    # beside ":", so they never meet the prefixed names below, and building them stays in C.
    names = set(tokens)
    names.update(map(" ".join, zip(tokens, tokens[1:], strict=False)))
    opening = tokens[:OPENING_TOKENS]
    names.update("o:" + token for token in opening)
    names.update(map("o:{} {}".format, opening, opening[1:]))
    names.update(map("o:{} {} {}".format, opening, opening[1:], opening[2:]))
    start = " ".join(head[:OPENING_CHARS].split())
    for size in CHAR_NGRAM_SIZES:
        names.update("c:" + start[i : i + size] for i in range(len(start) - size + 1))
    names.add("cue:" + cue_label)
    if cue_language:
        names.add("cuelang:" + cue_language)
    if "```" in text:
        names.add("has:code")
    if _LIST_LINE.search(head) is not None:
        names.add("has:list")
    if text.rstrip().endswith("?"):
        names.add("has:ends_question")
    return names


class LinearRefusalModel:
    """Softmax over `weights[features].sum() + bias`; `refusing` is P(refused) + P(partial)."""

    def __init__(
        self,
        vocabulary: list[str],
        weights: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32],
        meta: dict[str, Any],
    ) -> None:
        if weights.shape != (len(vocabulary), len(CLASSES)) or bias.shape != (len(CLASSES),):
            raise ModelError(f"weights of shape {weights.shape} do not match {len(vocabulary)} features")
        self.vocabulary = vocabulary
        self.index = {name: i for i, name in enumerate(vocabulary)}
        self.known = frozenset(vocabulary)
        self.weights = np.ascontiguousarray(weights, dtype=np.float32)
        self.bias = bias
        self.meta = meta
        # How much each feature pushes towards refusing (either refusing class) against answering.
        self._towards_refusing = np.maximum(self.weights[:, 0], self.weights[:, 1]) - self.weights[:, 2]

    def predict(
        self, text: str, cue_label: str, cue_language: str | None, threshold: float = 0.5
    ) -> RefusalPrediction:
        """The label (refusing when P(refused) + P(partial) >= threshold), probabilities, top features."""
        known = feature_names(text, cue_label, cue_language) & self.known
        rows = np.array([self.index[name] for name in known], dtype=np.intp)
        logit_refused, logit_partial, logit_answered = (self.weights[rows].sum(axis=0) + self.bias).tolist()
        top = max(logit_refused, logit_partial, logit_answered)
        exp_refused = math.exp(logit_refused - top)
        exp_partial = math.exp(logit_partial - top)
        exp_answered = math.exp(logit_answered - top)
        total = exp_refused + exp_partial + exp_answered
        refused, partial, answered = exp_refused / total, exp_partial / total, exp_answered / total
        refusing = refused + partial
        label: Label = "answered"
        if refusing >= threshold:
            label = "refused" if refused >= partial else "partial"
        return RefusalPrediction(
            label,
            refusing,
            {"refused": refused, "partial": partial, "answered": answered},
            self._top_features(rows, label != "answered"),
        )

    def _top_features(self, rows: npt.NDArray[np.intp], refusing: bool, count: int = 3) -> tuple[str, ...]:
        """The features that pushed hardest towards the decision taken."""
        if not len(rows):
            return ()
        push = self._towards_refusing[rows]
        if not refusing:
            push = -push
        order = np.argsort(push)[: -count - 1 : -1].tolist()
        pushes = push.tolist()
        return tuple(self.vocabulary[int(rows[i])] for i in order if pushes[i] > 0)


def save_model(
    path: Path,
    vocabulary: list[str],
    weights: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    meta: dict[str, Any],
) -> str:
    """Writes the weights and their `.sha256` beside them; returns the checksum."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        vocabulary=np.frombuffer("\n".join(vocabulary).encode("utf-8"), dtype=np.uint8),
        weights=weights.astype(np.float16),
        bias=bias.astype(np.float32),
        meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8),
    )
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    return digest


def read_model(path: Path) -> LinearRefusalModel:
    """Loads weights after checking them against their `.sha256`; any problem is a `ModelError`."""
    checksum_path = path.with_name(path.name + ".sha256")
    try:
        data = path.read_bytes()
        expected = checksum_path.read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError) as exc:
        raise ModelError(f"refusal detector weights {path} or their checksum cannot be read: {exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ModelError(
            f"refusal detector weights {path} do not match their checksum (sha256 {actual}, expected "
            f"{expected}): reinstall shadowtap or retrain with bench/train_refusal.py"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            vocabulary = arrays["vocabulary"].tobytes().decode("utf-8").split("\n")
            weights = arrays["weights"].astype(np.float32)
            bias = arrays["bias"].astype(np.float32)
            meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    except (KeyError, ValueError, OSError) as exc:
        raise ModelError(f"refusal detector weights {path} cannot be read: {exc}") from None
    return LinearRefusalModel(vocabulary, weights, bias, meta)


@lru_cache(maxsize=1)
def load_model() -> LinearRefusalModel:
    """The shipped model, loaded and checked once per process."""
    return read_model(WEIGHTS_PATH)
