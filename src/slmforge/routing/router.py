"""Routing between an on-device model and a cloud model, per request.

`Router.chat` streams events: first a `Decision` (which side answers and why), then `Part`s
(a side's `Delta`s, or its error). Policies:

- `local`, `cloud`: that side answers.
- `compare`: both answer at once; parts say which side they belong to.
- `local-first`: local answers; the cloud takes over when local fails, gives no first token
  within `ttft_timeout_s`, does not finish within `timeout_s`, or the content filter blocks the
  prompt or the answer (local's own server may block it too: `finish_reason: content_filter`).
- `cost`: the cloud answers long prompts (more than `long_prompt_tokens`); otherwise local
  starts, and its first `confidence_tokens` tokens are held back until their mean token
  log-probability says whether local is confident enough (`min_mean_logprob`); if not, the
  cloud answers instead. Local failures fall back as in local-first.

A `Decision` with `provisional=True` may be followed by a fallback `Decision` (`fallback=True`)
whose answer replaces whatever the provisional one streamed. `settled()` turns that into a
stream that never takes text back (held until the local answer completes), for consumers that
cannot retract text, such as an OpenAI-compatible endpoint. Every decision is logged through
`slmforge.progress` (policy, side and reason; never the prompt).

Engines stream in worker threads, so waits are bounded by the timeouts however long an engine
blocks; an abandoned stream is closed at its next delta.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

from slmforge.config.app import POLICIES, Policy, RouteSettings
from slmforge.errors import InputError
from slmforge.progress import info
from slmforge.runtime.engine import Delta, Engine, GenParams, Message
from slmforge.safety.verdicts import ContentFilter, NoFilter

Side = Literal["local", "cloud"]
# With a content filter, local text is released in pieces of at least this many characters
# (as serve/generation.py's FILTER_CHUNK_CHARS; not imported, so the router needs no server).
FILTER_WINDOW_CHARS = 80
CHARS_PER_TOKEN = 4  # the estimate when the local engine has no tokenizer to count with


@dataclass(frozen=True)
class Decision:
    policy: str
    sides: tuple[Side, ...]
    reason: str
    provisional: bool = False  # a fallback may still replace this answer
    fallback: bool = False  # replaces the answer of the provisional decision before it

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sides": list(self.sides)}

    def describe(self) -> str:
        return f"{self.policy} -> {'+'.join(self.sides)}: {self.reason}"


@dataclass
class Part:
    """A piece of one side's answer: a delta, or the error that ended it."""

    side: Side
    delta: Delta | None = None
    error: str | None = None


Event = Decision | Part


class LocalFailed(Exception):
    """Why the local answer cannot stand: a timeout, an error, or a filter block."""

    def __init__(self, reason: str, filtered: bool = False) -> None:
        super().__init__(reason)
        self.filtered = filtered


def _pump(stream: Callable[[], Iterator[Delta]], out: queue.Queue, stop: threading.Event) -> None:
    """Run one engine stream in this thread, handing its deltas (then None) to `out`."""
    try:
        deltas = stream()
        try:
            for delta in deltas:
                out.put(delta)
                if stop.is_set():
                    return
        finally:
            close = getattr(deltas, "close", None)
            if close is not None:
                close()
        out.put(None)
    except Exception as exc:  # handed to the consumer, which decides what it means
        out.put(exc)


def threaded(
    stream: Callable[[], Iterator[Delta]], name: str
) -> tuple[queue.Queue, threading.Event]:
    """Start `stream` in its own thread: its queue of deltas, and the event that stops it."""
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    threading.Thread(target=_pump, args=(stream, out, stop), name=name, daemon=True).start()
    return out, stop


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Router:
    """Routes chats between `local` and `cloud` engines. `content_filter` guards the local
    model (a small model is easier to talk into harm than a cloud model behind its provider's
    filter): it screens the prompt and local answers, never the cloud's."""

    def __init__(
        self,
        local: Engine,
        cloud: Engine,
        settings: RouteSettings | None = None,
        content_filter: ContentFilter | None = None,
    ) -> None:
        self.local = local
        self.cloud = cloud
        self.settings = settings or RouteSettings()
        self.content_filter = content_filter or NoFilter()

    def chat(
        self,
        messages: list[Message],
        params: GenParams,
        policy: Policy = "local-first",
        adapter: str | None = None,
        settings: RouteSettings | None = None,
        cloud_messages: list[Message] | None = None,
    ) -> Iterator[Event]:
        """A `Decision`, then the answer's `Part`s (see the module docs). `adapter` selects a
        local adapter; `settings` override the router's thresholds for this request;
        `cloud_messages` is the cloud's own conversation when it differs (compare keeps one
        per side), else `messages`."""
        if policy not in POLICIES:
            raise InputError(f"unknown routing policy {policy!r} (known: {', '.join(POLICIES)})")
        if adapter is not None and adapter not in self.local.adapters():
            known = ", ".join(self.local.adapters()) or "none"
            raise InputError(f"unknown adapter {adapter!r} (known: {known})")
        run = _Run(self, messages, params, policy, adapter, settings or self.settings)
        run.cloud_messages = cloud_messages or messages
        return run.events()


class _Run:
    """One routed request."""

    cloud_messages: list[Message]

    def __init__(self, router, messages, params, policy, adapter, settings) -> None:
        self.router: Router = router
        self.messages: list[Message] = messages
        self.params: GenParams = params
        self.policy: Policy = policy
        self.adapter: str | None = adapter
        self.settings: RouteSettings = settings

    def decide(self, sides: tuple[Side, ...], reason: str, **flags: bool) -> Decision:
        decision = Decision(self.policy, sides, reason, **flags)
        info(f"route {decision.describe()}", policy=self.policy, sides=list(sides))
        return decision

    def events(self) -> Iterator[Event]:
        if self.policy == "cloud":
            yield self.decide(("cloud",), "the cloud policy always asks the cloud model")
            yield from self.cloud_parts()
        elif self.policy == "local":
            yield self.decide(("local",), "the local policy always asks the local model")
            yield from self.local_parts()
        elif self.policy == "compare":
            yield self.decide(("local", "cloud"), "compare asks both models at once")
            yield from self.compare_parts()
        elif self.policy == "local-first":
            yield from self.local_first()
        else:
            yield from self.cost()

    # -- the sides ------------------------------------------------------------------------------
    def local_stream(self, params: GenParams | None = None) -> Iterator[Delta]:
        return self.router.local.chat(self.messages, params or self.params, self.adapter)

    def cloud_parts(self) -> Iterator[Part]:
        out, stop = threaded(
            lambda: self.router.cloud.chat(self.cloud_messages, self.params), "cloud"
        )
        yield from _drain("cloud", out, stop)

    def local_parts(self) -> Iterator[Part]:
        """Local's answer with no fallback: a filter block ends it with `content_filter`."""
        try:
            for delta in self.guarded_local(timeouts=False):
                yield Part("local", delta)
        except LocalFailed as exc:
            if exc.filtered:
                yield Part("local", Delta(finish_reason="content_filter"))
            else:
                yield Part("local", error=str(exc))

    def compare_parts(self) -> Iterator[Part]:
        """Both sides' parts as they come; one side failing does not stop the other."""
        out: queue.Queue = queue.Queue()
        stops = []
        for side, stream in (("local", self.local_parts), ("cloud", self.cloud_parts)):
            stop = threading.Event()
            stops.append(stop)
            threading.Thread(
                target=_relay, args=(stream, out, stop), name=f"compare-{side}", daemon=True
            ).start()
        try:
            for _ in range(len(stops)):
                while (part := out.get()) is not None:
                    yield part
        finally:
            for stop in stops:
                stop.set()

    # -- local with its guards ------------------------------------------------------------------
    def screen_prompt(self) -> None:
        verdict = self.router.content_filter.check_input(self.messages)
        if verdict.blocked:
            raise LocalFailed(_blocked("prompt", verdict.reason), filtered=True)

    def guarded_local(
        self, timeouts: bool = True, params: GenParams | None = None
    ) -> Iterator[Delta]:
        """Local deltas through the content filter and (with `timeouts`) the time limits;
        `LocalFailed` says why local cannot answer."""
        self.screen_prompt()
        out, stop = threaded(lambda: self.local_stream(params), "local")
        settings = self.settings
        ttft = settings.ttft_timeout_s if timeouts else None
        total = settings.timeout_s if timeouts else None
        deltas = _timed(out, stop, ttft, total)
        yield from _screened(deltas, self.router.content_filter)

    def local_first(self) -> Iterator[Event]:
        yield self.decide(("local",), "local-first asks the local model first", provisional=True)
        try:
            for delta in self.guarded_local():
                yield Part("local", delta)
            return
        except LocalFailed as exc:
            reason = str(exc)
        yield self.decide(("cloud",), f"fell back to the cloud: {reason}", fallback=True)
        yield from self.cloud_parts()

    def cost(self) -> Iterator[Event]:
        tokens, how = self.prompt_tokens()
        limit = self.settings.long_prompt_tokens
        if tokens > limit:
            yield self.decide(("cloud",), f"long prompt: {tokens} {how} > {limit}")
            yield from self.cloud_parts()
            return
        probe = self.params.model_copy(update={"logprobs": True})
        held: list[Delta] = []
        try:
            deltas = self.guarded_local(params=probe)
            confidence = _confidence(deltas, held, self.settings.confidence_tokens)
        except LocalFailed as exc:
            yield self.decide(("cloud",), f"local failed: {exc}")
            yield from self.cloud_parts()
            return
        minimum = self.settings.min_mean_logprob
        if confidence is not None and confidence < minimum:
            deltas.close()
            reason = f"low local confidence: mean token logprob {confidence:.2f} < {minimum:g}"
            yield self.decide(("cloud",), reason)
            yield from self.cloud_parts()
            return
        shown = "no logprobs" if confidence is None else f"mean token logprob {confidence:.2f}"
        yield self.decide(
            ("local",),
            f"short prompt ({tokens} {how}), local is confident ({shown})",
            provisional=True,
        )
        keep = self.params.logprobs
        try:
            for delta in itertools.chain(held, deltas):
                yield Part("local", delta if keep else _without_logprobs(delta))
        except LocalFailed as exc:
            yield self.decide(("cloud",), f"fell back to the cloud: {exc}", fallback=True)
            yield from self.cloud_parts()

    def prompt_tokens(self) -> tuple[int, str]:
        """The prompt's length in the local model's tokens, or estimated from characters."""
        prompt_ids = getattr(self.router.local, "prompt_ids", None)
        if prompt_ids is not None:
            return len(prompt_ids(self.messages)), "tokens"
        chars = sum(len(m.get("content", "")) for m in self.messages)
        return chars // CHARS_PER_TOKEN, "tokens (estimated)"


def _relay(stream: Callable[[], Iterator[Part]], out: queue.Queue, stop: threading.Event) -> None:
    parts = stream()
    try:
        for part in parts:
            out.put(part)
            if stop.is_set():
                return
    finally:
        parts.close()
        out.put(None)


def _drain(side: Side, out: queue.Queue, stop: threading.Event) -> Iterator[Part]:
    """A side's parts from its pump; its error becomes an error part."""
    try:
        while (item := out.get()) is not None:
            if isinstance(item, Exception):
                yield Part(side, error=_message(item))
                return
            yield Part(side, item)
    finally:
        stop.set()


def _timed(
    out: queue.Queue, stop: threading.Event, ttft_s: float | None, total_s: float | None
) -> Iterator[Delta]:
    """Deltas from a pump, raising `LocalFailed` on an error, a `content_filter` finish, no
    text within `ttft_s` or no end within `total_s`."""
    start = time.monotonic()
    seen_text = False
    try:
        while True:
            limits = [] if total_s is None else [(total_s, f"did not finish within {total_s:g}s")]
            if ttft_s is not None and not seen_text:
                limits.append((ttft_s, f"gave no first token within {ttft_s * 1000:.0f} ms"))
            limit, what = min(limits, default=(None, ""))
            try:
                if limit is None:
                    item = out.get()
                else:
                    item = out.get(timeout=max(limit - (time.monotonic() - start), 0))
            except queue.Empty:
                raise LocalFailed(f"the local model {what}") from None
            if item is None:
                return
            if isinstance(item, Exception):
                raise LocalFailed(f"the local model failed: {_message(item)}")
            if item.finish_reason == "content_filter":
                raise LocalFailed(_blocked("answer", "its server's filter"), filtered=True)
            seen_text = seen_text or bool(item.text)
            yield item
    finally:
        stop.set()


def _blocked(what: str, reason: str) -> str:
    return f"the content filter blocked the {what}" + (f" ({reason})" if reason else "")


def _screened(deltas: Iterator[Delta], content_filter: ContentFilter) -> Iterator[Delta]:
    """Local text released in windows the filter has passed; a block raises `LocalFailed`."""
    if not getattr(content_filter, "screens_output", not isinstance(content_filter, NoFilter)):
        yield from deltas
        return
    released, held = "", []
    for delta in deltas:
        final = delta.finish_reason is not None or delta.timings is not None
        held.append(delta)
        text = "".join(d.text for d in held)
        if not final and len(text) < FILTER_WINDOW_CHARS:
            continue
        verdict = content_filter.check_output(released + text)
        if verdict.blocked:
            raise LocalFailed(_blocked("answer", verdict.reason), filtered=True)
        released += text
        yield from held
        held = []
    yield from held


def _confidence(deltas: Iterator[Delta], held: list[Delta], tokens: int) -> float | None:
    """Read (and keep in `held`) deltas until `tokens` logprobs are seen or the answer ends;
    the mean token log-probability, or None when the engine reports none."""
    values: list[float] = []
    for delta in deltas:
        held.append(delta)
        values += [entry.logprob for entry in delta.logprobs or []]
        if len(values) >= tokens or delta.finish_reason is not None:
            break
    return sum(values) / len(values) if values else None


def _without_logprobs(delta: Delta) -> Delta:
    if delta.logprobs is None:
        return delta
    return dataclasses.replace(delta, logprobs=None)


def settled(events: Iterator[Event]) -> Iterator[Event]:
    """`events` without answers that a fallback replaced: after a provisional decision, events
    are held until its answer ends (then released, the decision no longer provisional) or a
    fallback decision drops them."""
    held: list[Event] = []
    for event in events:
        if isinstance(event, Decision) and event.provisional:
            held = [Decision(event.policy, event.sides, event.reason, fallback=event.fallback)]
            continue
        if isinstance(event, Decision) and event.fallback:
            held = []
        if held:
            held.append(event)
            continue
        yield event
    yield from held
