"""Scoring a live call turn by turn: the calls' state and the scorer, pure Python and PyTorch.

serve.py puts these behind Ray Serve (the book in one actor that every replica reads, the
scorer in each replica); the tests drive them directly too. A turn is scored as `predict
--causal` scores it (scoring.py): SDT over the call's last `max_context` turns, itself last,
with the text encoder reading what `extract` gives it (text_card.py). So a live score can be
checked against a batch one on the same checkpoint.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field

import numpy as np

from .scoring import CAUSAL_CONTEXT


class LiveError(Exception):
    """A request that cannot be taken: an HTTP status and a one-line reason for the client."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason

    def __reduce__(self):  # it travels from the calls' actor to the replica as a value
        return LiveError, (self.status, self.reason)


@dataclass(frozen=True)
class LiveLimits:
    """What bounds the state and the requests (memory per call, open calls, request sizes)."""

    max_context: int = CAUSAL_CONTEXT  # turns a score sees, itself included: all a call keeps for scoring
    max_open_calls: int = 10_000  # past it, idle calls go first; then a new call is refused (503)
    idle_timeout_s: float = 900.0  # a call with no turn for this long is evicted
    max_turns: int = 10_000  # scored turns a call keeps for GET and the archive (a turn a few seconds: hours)
    max_text_chars: int = 4_000  # per turn (a minute of speech is about 1,000 characters)
    max_speaker_chars: int = 200
    pending_timeout_s: float = 30.0  # a turn taken by a replica that died is free to retake after this
    ended_remembered: int = 100_000  # ended call ids kept, so that a late turn is refused, not a new call


@dataclass(frozen=True)
class Turn:
    speaker: str
    text: str
    start_s: float | None = None
    end_s: float | None = None
    turn_id: str | None = None  # the client's id for the turn: a retry with it is scored once


@dataclass
class ScoredTurn:
    call_id: str
    index: int  # 0, 1, ... in the call
    speaker: str
    text: str
    start_s: float | None
    end_s: float | None
    label: str
    confidence: float
    probabilities: dict[str, float]
    modality_weights: dict[str, float]
    turn_id: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TurnContext:
    """What scoring one turn needs from its call: the turns before it in the window."""

    call_id: str
    index: int
    speaker_ids: list[int]  # (n,) the window's relative speaker ids, this turn last
    vectors: list[list[float]]  # (n - 1, D) the earlier turns' text vectors
    texts: list[str]  # (<= past,) the earlier turns as `speaker: text`, in call order, for the encoder's context


@dataclass
class _Call:
    speakers: list[str] = field(default_factory=list)  # first appearances, up to max_speakers - 1 of them
    recent: deque = field(default_factory=deque)  # (speaker_id, vector, `speaker: text`) of the last turns
    scored: list[ScoredTurn] = field(default_factory=list)
    turn_ids: dict[str, int] = field(default_factory=dict)  # client turn id -> index
    next_index: int = 0
    last_seen: float = 0.0
    pending: tuple[str | None, float] | None = None  # (turn id, since): a turn being scored now


class CallBook:
    """Every open call's bounded state. One instance serves every replica (serve.py keeps it in
    an actor), so a turn's score does not depend on which replica took it.

    A turn is taken with `begin` (which gives its context) and recorded with `commit`. One turn
    per call at a time: a live call speaks in order, and a second turn before the first is
    scored is refused (409), unless it is the same turn again (the client's retry)."""

    def __init__(self, limits: LiveLimits, max_speakers: int, past: int = 0, clock=time.monotonic,
                 speaker_table: tuple[str, ...] | None = None):
        """past: earlier turns the text encoder reads as context (its card's); max_speakers and
        speaker_table: the checkpoint's (a table for speaker_mode fixed, None for relative ids)."""
        self.limits, self.max_speakers, self.past, self.clock = limits, max_speakers, past, clock
        self.speaker_table = speaker_table
        self.keep = max(limits.max_context - 1, past)  # earlier turns a call holds for scoring
        self.calls: dict[str, _Call] = {}
        self.ended: OrderedDict[str, None] = OrderedDict()

    def begin(self, call_id: str, turn: Turn) -> TurnContext | ScoredTurn:
        """The turn's context, or its score when this turn id was scored already."""
        now = self.clock()
        if call_id in self.ended:
            raise LiveError(409, f"call {call_id} has ended; a new call needs a new id")
        call = self.calls.get(call_id) or self._open(call_id, now)
        if turn.turn_id is not None and turn.turn_id in call.turn_ids:
            return call.scored[call.turn_ids[turn.turn_id]]
        # A turn being scored blocks the next one; the same turn id again is its retry (its replica
        # may have died) and takes it over. A turn without an id cannot be told from a new one.
        retry = turn.turn_id is not None and call.pending is not None and call.pending[0] == turn.turn_id
        if call.pending is not None and not retry and now - call.pending[1] < self.limits.pending_timeout_s:
            raise LiveError(409, f"call {call_id}: the previous turn is still being scored; send turns in order")
        if call.next_index >= self.limits.max_turns:
            raise LiveError(409, f"call {call_id} reached {self.limits.max_turns} turns; end it and start another")
        call.pending, call.last_seen = (turn.turn_id, now), now
        recent = list(call.recent)
        window = recent[max(0, len(recent) - (self.limits.max_context - 1)):]  # the earlier turns SDT reads
        return TurnContext(
            call_id, call.next_index,
            [r[0] for r in window] + [self._speaker_id(call, turn.speaker, commit=False)],
            [r[1] for r in window],
            [r[2] for r in recent[max(0, len(recent) - self.past):]],  # the earlier turns the encoder reads
        )

    def commit(self, scored: ScoredTurn, vector: list[float], spoken: str) -> ScoredTurn:
        """Record a scored turn. A turn whose call ended meanwhile, or that another took over
        (its pending time ran out), is refused, so that no client is told of a score the call lacks."""
        call = self.calls.get(scored.call_id)
        if call is None:
            raise LiveError(409, f"call {scored.call_id} ended while its turn was being scored")
        if scored.turn_id is not None and scored.turn_id in call.turn_ids:  # its retry was recorded first
            return call.scored[call.turn_ids[scored.turn_id]]
        if scored.index != call.next_index or call.pending is None or call.pending[0] != scored.turn_id:
            raise LiveError(409, f"call {scored.call_id}: turn {scored.index} was taken over by another; send it again")
        call.recent.append((self._speaker_id(call, scored.speaker, commit=True), vector, spoken))
        while len(call.recent) > self.keep:
            call.recent.popleft()
        call.scored.append(scored)
        if scored.turn_id is not None:
            call.turn_ids[scored.turn_id] = scored.index
        call.next_index += 1
        call.pending, call.last_seen = None, self.clock()
        return scored

    def abort(self, call_id: str, index: int, turn_id: str | None) -> None:
        """A turn that could not be scored frees its call for the next one (or its retry)."""
        call = self.calls.get(call_id)
        if call is not None and call.next_index == index and call.pending is not None and call.pending[0] == turn_id:
            call.pending = None

    def turns(self, call_id: str) -> list[ScoredTurn]:
        if call_id not in self.calls:
            state = "has ended" if call_id in self.ended else "is not open"
            raise LiveError(404, f"call {call_id} {state}")
        return list(self.calls[call_id].scored)

    def end(self, call_id: str) -> list[ScoredTurn]:
        scored = self.turns(call_id)
        del self.calls[call_id]
        self._remember_ended(call_id)
        return scored

    def evict_idle(self) -> list[str]:
        """Close the calls idle past the timeout; their ids (they count as ended)."""
        now = self.clock()
        idle = [c for c, call in self.calls.items() if now - call.last_seen >= self.limits.idle_timeout_s]
        for call_id in idle:
            del self.calls[call_id]
            self._remember_ended(call_id)
        return idle

    def _open(self, call_id: str, now: float) -> _Call:
        if len(self.calls) >= self.limits.max_open_calls:
            self.evict_idle()
        if len(self.calls) >= self.limits.max_open_calls:
            raise LiveError(503, f"{len(self.calls)} calls are open, the limit; end one or retry later")
        call = self.calls[call_id] = _Call(last_seen=now)
        return call

    def _remember_ended(self, call_id: str) -> None:
        self.ended[call_id] = None
        while len(self.ended) > self.limits.ended_remembered:
            self.ended.popitem(last=False)

    def _speaker_id(self, call: _Call, speaker: str, commit: bool) -> int:
        """Relative ids as collate.relative_speaker_ids gives them over the whole call: first
        appearance order, every speaker past the table sharing the last slot. Only the first
        max_speakers - 1 names need keeping for that."""
        if self.speaker_table is not None:  # collate.fixed_speaker_ids
            return self.speaker_table.index(speaker) if speaker in self.speaker_table else self.max_speakers - 1
        if speaker in call.speakers:
            return call.speakers.index(speaker)
        new = min(len(call.speakers), self.max_speakers - 1)
        if commit and len(call.speakers) < self.max_speakers - 1:
            call.speakers.append(speaker)
        return new


def check_servable(checkpoint: str, config, text_model: str | None, max_context: int | None = None) -> None:
    """Before any replica starts: the checkpoint reads text, the encoder makes vectors of its
    size, its context input needs no future turns (a live call has none yet), and the window
    (when given) fits the model."""
    from .errors import ConfigError
    from .features.text import resolve_text_model, text_model_dim
    from .text_card import read_card

    if max_context is not None and not 1 <= max_context <= config.max_len:
        raise ConfigError(f"--max-context {max_context}: between 1 and the checkpoint's max_len ({config.max_len})")
    if "text" not in config.modalities:
        raise ConfigError(f"{checkpoint}: live scoring reads text, and this checkpoint has no text modality ({list(config.modalities)})")
    made = text_model_dim(text_model)
    if made != config.input_dim("text"):
        raise ConfigError(f"the checkpoint needs text vectors of {config.input_dim('text')} values, "
                          f"but --text-model {text_model or 'minilm'} makes {made}")
    card = read_card(resolve_text_model(text_model))
    if card is not None and (card.future or card.window):
        read = "dialogue windows (the turns after each utterance too)" if card.window else f"{card.future} future turns of context"
        raise ConfigError(f"--text-model {text_model}: fine-tuned with {read}; "
                          "a live call has no future turns (fine-tune it without future context)")


class LiveScorer:
    """A checkpoint and its text encoder, loaded once: a batch of turns (of different calls)
    in, their scores out, with one encoder pass and one SDT pass."""

    def __init__(self, checkpoint: str, text_model: str | None = None, device: str = "cpu", threads: int | None = None):
        import torch

        from .checkpoint import load_checkpoint
        from .features.text import TextEncoder

        if threads:
            torch.set_num_threads(threads)
        self.loaded = load_checkpoint(checkpoint, device=device)
        check_servable(checkpoint, self.loaded.config, text_model)
        self.encoder = TextEncoder(text_model, device=device)
        self.text_input = self.encoder.text_input
        self.device = device

    def book(self, limits: LiveLimits) -> CallBook:
        """An empty CallBook that keeps what this scorer's windows and encoder context need."""
        config = self.loaded.config
        table = config.speaker_names if config.speaker_mode == "fixed" else None
        return CallBook(limits, config.max_speakers, self.text_input.past, speaker_table=table)

    def score(self, work: list[tuple[TurnContext, Turn]]) -> list[tuple[ScoredTurn, list[float], str]]:
        """For each (context, turn): its score, its text vector and its `speaker: text` (for the book)."""
        from .collate import Dialogue, batches
        from .engine import predict
        from .schema import IGNORE_LABEL
        from .text_card import speaker_text, turn_context

        spec, config = self.text_input, self.loaded.config
        spoken = [speaker_text(turn.speaker, turn.text) for _, turn in work]
        texts = spoken if spec.speakers else [turn.text for _, turn in work]
        contexts = [turn_context(ctx.texts, [], spec) for ctx, _ in work] if spec.has_context else None
        vectors, _ = self.encoder(texts, contexts)  # (N, D); the API refuses empty texts before this
        windows = []
        for k, ((ctx, _), vector) in enumerate(zip(work, vectors)):
            n = len(ctx.speaker_ids)
            text = np.asarray(ctx.vectors + [vector.tolist()], np.float32).reshape(n, -1)  # (n, D)
            features = {m: text if m == "text" else np.zeros((n, config.input_dim(m)), np.float32) for m in config.modalities}
            present = {m: np.full(n, m == "text") for m in config.modalities}
            windows.append(Dialogue(f"w{k}", features, np.asarray(ctx.speaker_ids, np.int64), np.full(n, IGNORE_LABEL), present))
        result = predict(self.loaded.model, batches(windows, len(windows), config.max_speakers), self.device, self.loaded.temperature)
        last = {d: k for k, d in enumerate(result.dialogue_ids)}  # each window's last row is its turn
        out = []
        for k, ((ctx, turn), vector) in enumerate(zip(work, vectors)):
            row = last[f"w{k}"]
            probs = result.probabilities[row]
            out.append((ScoredTurn(
                ctx.call_id, ctx.index, turn.speaker, turn.text, turn.start_s, turn.end_s,
                self.loaded.labels[int(probs.argmax())], float(probs.max()),
                {label: float(p) for label, p in zip(self.loaded.labels, probs)},
                {m: float(w) for m, w in zip(config.modalities, result.modality_weights[row])}, turn.turn_id,
            ), vector.tolist(), spoken[k]))
        return out


def archive_table(scored: list[ScoredTurn], labels: list[str], modalities: tuple[str, ...], model_id: str, model_version: str):
    """A call's scored turns as rows of the predictions schema (schema.predictions_table)."""
    import pyarrow as pa

    from .schema import predictions_table

    rows = pa.table({
        "dialogue_id": [t.call_id for t in scored], "utterance_index": pa.array([t.index for t in scored], pa.int32()),
        "speaker": [t.speaker for t in scored],
    })
    probabilities = np.array([[t.probabilities[c] for c in labels] for t in scored], np.float32).reshape(len(scored), len(labels))
    weights = np.array([[t.modality_weights[m] for m in modalities] for t in scored], np.float32).reshape(len(scored), len(modalities))
    used = [[m for m in modalities if m == "text"] for _ in scored]
    return predictions_table(rows, probabilities, weights, [None] * len(scored), labels, modalities, model_id, model_version, used=used)
