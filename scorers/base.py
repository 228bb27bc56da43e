"""The scorer plug-in interface: a name, the outcomes it can give, and one async `score(pair)`."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from shadowtap.records import Score

__all__ = ["Score", "Scorer", "side_text"]


@runtime_checkable
class Scorer(Protocol):
    """A scorer judges one pair record and returns its verdicts.

    `score` is async so that a network-bound scorer (the judge) never blocks CPU-bound ones. It may
    return several `Score`s (one per side, and/or one for the pair); every outcome must be in `outcomes`.
    """

    name: ClassVar[str]
    outcomes: ClassVar[frozenset[str]]

    async def score(self, pair: dict[str, Any]) -> list[Score]: ...


def side_text(pair: dict[str, Any], side: str) -> str | None:
    """The assembled output text of one side, or None when that side failed or gave no text."""
    part = pair.get(side) or {}
    if part.get("error") is not None and not part.get("text"):
        return None
    return part.get("text")
