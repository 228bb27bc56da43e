"""The candidate's model, when config names none: asked of its `/v1/models` (DESIGN.md, `serve`).

Exactly one model listed is the answer; several, or none, is a start-up error that lists them and names
`--candidate-model`; a candidate that does not answer is asked again in the background, and until then
sampled requests are skipped as `candidate_model_unknown`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import httpx

from shadowtap.errors import ConfigError, ShadowtapError
from shadowtap.proxy.transport import UpstreamResponse
from shadowtap.proxy.upstream import Upstream

log = logging.getLogger("shadowtap.shadow")

# Start-up waits this long for the first answer, then goes on while the asking continues in the
# background; one attempt is bounded by DISCOVERY_TIMEOUT_S (and never outlasts candidate.timeout_s);
# attempts that fail are retried after a delay that doubles up to a cap.
DISCOVERY_STARTUP_WAIT_S = 2.0
DISCOVERY_TIMEOUT_S = 10.0
DISCOVERY_BACKOFF_S = 0.5
DISCOVERY_BACKOFF_MAX_S = 30.0
MODELS_MAX_BYTES = 1 << 20  # a model list longer than this is not one to choose from
MODELS_LISTED_MAX = 20  # an error names at most this many of the models listed


class _Unanswered(ShadowtapError):
    """The candidate's `/models` gave no model list; `kind` (a small fixed set) says how, for the log."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _model_ids(status: int, content: bytes) -> list[str]:
    """The model ids a `/models` answer lists (`{"object": "list", "data": [{"id": ...}, ...]}`, as
    OpenAI and vLLM answer), in order, each once; `_Unanswered` when it is no such list."""
    if status != 200:
        raise _Unanswered(f"http_{status}", f"answered HTTP {status}")
    try:
        listing = json.loads(content)
    except (ValueError, RecursionError):
        raise _Unanswered("not_json", "answered with something other than JSON") from None
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise _Unanswered("not_a_list", 'answered JSON without a "data" list of models')
    ids: list[str] = []
    for entry in data:
        model = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(model, str) or not model:
            raise _Unanswered("not_a_list", 'answered a "data" list with an entry that has no model "id"')
        ids.append(model)
    return list(dict.fromkeys(ids))


def _not_one_model(url: str, ids: list[str]) -> str:
    """Why the candidate's model cannot be chosen from its list, phrased as the config error it is."""
    if not ids:
        found = "lists no models"
    else:
        shown = ", ".join(ids[:MODELS_LISTED_MAX])
        more = f" and {len(ids) - MODELS_LISTED_MAX} more" if len(ids) > MODELS_LISTED_MAX else ""
        found = f"lists {len(ids)} models ({shown}{more})"
    return (
        f"candidate.model: not set, and the candidate's {url} {found}; "
        "name the one to mirror to with --candidate-model NAME or candidate.model"
    )


class ModelDiscovery:
    """The candidate's one served model, from its `/models`, for when config names none (DESIGN.md).

    At start-up one answer is waited for (briefly): one model is the answer; several, or none, is a
    start-up error naming `candidate.model`. A candidate that does not answer (down, slow, an error, not
    JSON) does not hold the proxy back: it is asked again in the background, with backoff, until it
    answers with one model. `on_found` gets the model; each kind of failure is logged once in a row.
    """

    def __init__(
        self,
        candidate: Upstream,
        headers: list[tuple[bytes, bytes]],
        timeout_s: float,
        on_found: Callable[[str], None],
    ) -> None:
        self.candidate = candidate
        self.url = candidate.url_for("/v1/models")
        # Asked once (or until it answers): no connection is kept in the pool for it, none is left open
        # when start-up fails on the answer.
        self.headers = [*headers, (b"connection", b"close")]
        self.timeout_s = min(timeout_s, DISCOVERY_TIMEOUT_S)
        self.on_found = on_found
        self._last_failure: str | None = None
        self._retrying: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Ask once, waiting up to DISCOVERY_STARTUP_WAIT_S; `ConfigError` when the candidate lists several
        models or none. Unanswered by then, the asking goes on in the background."""
        first = asyncio.create_task(self.ask(), name="candidate-model-discovery")
        try:
            done, _ = await asyncio.wait({first}, timeout=DISCOVERY_STARTUP_WAIT_S)
        except asyncio.CancelledError:
            first.cancel()
            raise
        if first in done and not isinstance(first.exception(), _Unanswered):
            ids = first.result()
            if len(ids) != 1:
                raise ConfigError(_not_one_model(self.url, ids))
            self._found(ids[0])
            return
        self._retrying = asyncio.create_task(self._keep_asking(first), name="candidate-model-discovery")

    async def aclose(self) -> None:
        # The cancel alone can be lost: Python 3.11's asyncio.wait_for drops one that races a result.
        self._closed = True
        if self._retrying is not None:
            self._retrying.cancel()
            await asyncio.gather(self._retrying, return_exceptions=True)

    async def ask(self) -> list[str]:
        """The model ids the candidate's `/models` lists; `_Unanswered` when it gives no such list."""
        try:
            async with asyncio.timeout(self.timeout_s):
                response = await self.candidate.send("GET", "/v1/models", self.headers, b"")
                try:
                    content = await _read_at_most(response, MODELS_MAX_BYTES)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise _Unanswered("timeout", f"gave no answer within {self.timeout_s:g}s") from None
        except httpx.ConnectError as exc:
            raise _Unanswered("connect", f"could not be reached ({exc})") from None
        except httpx.HTTPError as exc:
            raise _Unanswered("transport", f"failed ({type(exc).__name__}: {exc})") from None
        if content is None:
            raise _Unanswered("too_large", f"answered more than {MODELS_MAX_BYTES} bytes")
        return _model_ids(response.status, content)

    async def _keep_asking(self, attempt: Awaitable[list[str]]) -> None:
        delay = DISCOVERY_BACKOFF_S
        while True:
            try:
                ids = await attempt
            except _Unanswered as exc:
                self._failed(exc.kind, f"the candidate's {self.url} {exc}")
            except Exception:  # a fault here must not end the asking, and is logged, never swallowed
                log.exception("asking the candidate's %s for its model failed", self.url)
            else:
                if len(ids) == 1:
                    self._found(ids[0])
                    return
                self._failed("several" if ids else "none", _not_one_model(self.url, ids))
            if self._closed:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, DISCOVERY_BACKOFF_MAX_S)
            attempt = self.ask()

    def _found(self, model: str) -> None:
        log.info("candidate model: %s (discovered from %s)", model, self.url)
        self.on_found(model)

    def _failed(self, kind: str, detail: str) -> None:
        """Log a failed attempt: at warning level when it differs in kind from the one before, else debug."""
        level = logging.DEBUG if kind == self._last_failure else logging.WARNING
        self._last_failure = kind
        log.log(
            level,
            "candidate model unknown: %s; sampled requests are not mirrored until it is known "
            '(shadow_skipped_total{reason="candidate_model_unknown"}); asking again, backing off to every %gs',
            detail,
            DISCOVERY_BACKOFF_MAX_S,
        )


async def _read_at_most(response: UpstreamResponse, limit: int) -> bytes | None:
    """The response's whole body, or None once it passes `limit` bytes (the rest is not read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
