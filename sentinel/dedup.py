"""Near-duplicate requests: the same question asked twice should count once in a sentinel set.

Two requests are duplicates when their normalised texts are equal (case, punctuation and spacing
removed), and near-duplicates when their word shingles overlap by at least a Jaccard threshold.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict

_NOT_WORD = re.compile(r"[\W_]+")


def normalise_text(text: str) -> str:
    """Case, accents' composition, punctuation and spacing removed: what two near-copies share."""
    return " ".join(_NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).split())


def shingles(normalised: str, words: int) -> frozenset[str]:
    tokens = normalised.split()
    if len(tokens) <= words:
        return frozenset({normalised})
    return frozenset(" ".join(tokens[i : i + words]) for i in range(len(tokens) - words + 1))


class NearDuplicates:
    """Accepted texts, indexed by shingle so that a new text is compared only with those it overlaps."""

    def __init__(self, threshold: float, words: int) -> None:
        self.threshold = threshold
        self.words = words
        self.exact: set[str] = set()
        self.accepted: list[frozenset[str]] = []
        self.index: dict[str, list[int]] = defaultdict(list)

    def is_duplicate(self, text: str) -> bool:
        normalised = normalise_text(text)
        if normalised in self.exact:
            return True
        mine = shingles(normalised, self.words)
        overlap: Counter[int] = Counter()
        for shingle in mine:
            overlap.update(self.index.get(shingle, ()))
        for other, shared in overlap.items():
            union = len(mine) + len(self.accepted[other]) - shared
            if union and shared / union >= self.threshold:
                return True
        return False

    def add(self, text: str) -> None:
        normalised = normalise_text(text)
        self.exact.add(normalised)
        mine = shingles(normalised, self.words)
        number = len(self.accepted)
        self.accepted.append(mine)
        for shingle in mine:
            self.index[shingle].append(number)
