"""`sdt-ray serve`: live scoring on Ray Serve, turn by turn, with each call's context.

    client --HTTP/WebSocket--> LiveScoring replica (FastAPI ingress)
        -> CallStore actor: begin (the turn's context: the call's last turns)
        -> @serve.batch: the turns of concurrent calls, one encoder pass and one SDT pass (live.LiveScorer)
        -> CallStore actor: commit

The calls' state lives in one detached actor that every replica reads, so a turn's score does
not depend on which replica took it, and a replica that dies loses no call. What a score is
(causal, windowed) is live.py's; `predict --causal` gives the same in batch.
"""

# No `from __future__ import annotations`: FastAPI reads the route parameters' types (Request,
# WebSocket, TurnIn) from live annotations, and Serve's ingress wrapper loses string ones.

import asyncio
import hashlib
import hmac
import ipaddress
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field

import ray
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from ray import serve
from starlette.exceptions import HTTPException

from .errors import ConfigError
from .live import CallBook, LiveError, LiveLimits, LiveScorer, ScoredTurn, Turn, archive_table

APP_NAME = "sdt-ray"
STORE_NAMESPACE = "sdt_ray_serve"
MAX_BODY_BYTES = 64 * 1024  # per request: a turn is a few hundred bytes
CALL_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # it names the call's rows and its archive file


@dataclass(frozen=True)
class ServeSettings:
    checkpoint: str
    text_model: str | None = None  # the encoder the checkpoint's text features came from (default MiniLM)
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # required (Authorization: Bearer TOKEN) when given; must be given off loopback
    replicas: int = 1
    cpus_per_replica: float = 1.0  # also the replica's torch threads
    gpus_per_replica: float = 0.0
    max_batch_size: int = 32  # turns of concurrent calls per forward pass
    batch_wait_s: float = 0.005  # how long a turn waits for others to batch with
    archive: str | None = None  # folder (or s3://) that DELETE ...?archive=true appends a call's rows to
    limits: LiveLimits = field(default_factory=LiveLimits)

    @property
    def store_name(self) -> str:
        """The calls' actor, named by what decides a score: a redeploy with the same checkpoint,
        encoder and limits finds the calls it had; one with others starts with none."""
        key = json.dumps([self.checkpoint, self.text_model, repr(self.limits)])
        return "calls-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def check_exposure(host: str, token: str | None) -> None:
    """Loopback needs nothing; any other address serves the network and needs a token."""
    if not token and not is_loopback(host):
        raise ConfigError(f"--host {host} is reachable from other machines: pass --token (or bind 127.0.0.1)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TurnIn(BaseModel):
    """POST /v1/calls/{call_id}/turns: one turn as it is spoken."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN seconds could not be answered as JSON
    speaker: str | None = None  # a name as in the training tables
    role: str | None = None  # or a role for calls (agent, customer): the same field to the model
    text: str
    start_s: float | None = None
    end_s: float | None = None
    turn_id: str | None = None  # the client's id: a retry with it is scored once


def checked_turn(body: TurnIn, limits: LiveLimits) -> Turn:
    """The turn, or LiveError(422) with the one thing wrong with it."""
    who = body.speaker if body.speaker is not None else body.role
    if who is None or not who.strip():
        raise LiveError(422, "a turn needs 'speaker' (or 'role')")
    if len(who) > limits.max_speaker_chars:
        raise LiveError(422, f"'speaker' is {len(who)} characters; at most {limits.max_speaker_chars}")
    if not body.text.strip():
        raise LiveError(422, "'text' is empty")
    if len(body.text) > limits.max_text_chars:
        raise LiveError(422, f"'text' is {len(body.text)} characters; at most {limits.max_text_chars} per turn")
    if body.start_s is not None and body.end_s is not None and body.end_s < body.start_s:
        raise LiveError(422, "'end_s' is before 'start_s'")
    if body.turn_id is not None and len(body.turn_id) > 128:
        raise LiveError(422, "'turn_id' is over 128 characters")
    return Turn(who, body.text, body.start_s, body.end_s, body.turn_id)  # the name as given, as in batch


def checked_call_id(call_id: str) -> str:
    if not CALL_ID.match(call_id):
        raise LiveError(422, "a call id is 1-128 characters of letters, digits and . _ : -")
    return call_id


@ray.remote(num_cpus=0, max_restarts=0)
class CallStore:
    """The calls' book (live.CallBook) in one actor. Refusals come back as LiveError values, so
    the replica can answer with their status instead of a Ray task error."""

    def __init__(self, book: CallBook):
        self.book = book
        self.evicted_at = 0.0

    def begin(self, call_id: str, turn: Turn):
        if time.monotonic() - self.evicted_at > 1.0:  # idle calls go at most once a second
            self.book.evict_idle()
            self.evicted_at = time.monotonic()
        return _refusal_as_value(self.book.begin, call_id, turn)

    def commit(self, scored: ScoredTurn, vector: list[float], spoken: str):
        return _refusal_as_value(self.book.commit, scored, vector, spoken)

    def abort(self, call_id: str, index: int, turn_id: str | None) -> None:
        self.book.abort(call_id, index, turn_id)

    def turns(self, call_id: str):
        return _refusal_as_value(self.book.turns, call_id)

    def end(self, call_id: str):
        return _refusal_as_value(self.book.end, call_id)


def _refusal_as_value(method, *args):
    try:
        return method(*args)
    except LiveError as refusal:
        return refusal


def _raise_refusal(value):
    if isinstance(value, LiveError):
        raise value
    return value


def call_store(settings: ServeSettings, scorer: LiveScorer):
    """The one CallStore of this application: created by the first replica that asks, found by
    the others. Detached, so that it outlives the replica that created it."""
    return CallStore.options(
        name=settings.store_name, namespace=STORE_NAMESPACE, get_if_exists=True, lifetime="detached",
    ).remote(scorer.book(settings.limits))


def _validated_turn(value: dict) -> TurnIn:
    """A WebSocket message's turn, or LiveError(422) naming the first wrong field."""
    from pydantic import ValidationError

    try:
        return TurnIn.model_validate(value)
    except ValidationError as invalid:
        raise LiveError(422, _first_problem(invalid.errors())) from None


def _json_object(message: str) -> dict:
    """A WebSocket message as a JSON object, or LiveError (400 malformed, 422 not an object)."""
    try:
        value = json.loads(message)
    except json.JSONDecodeError:
        raise LiveError(400, "malformed JSON") from None
    if not isinstance(value, dict):
        raise LiveError(422, "a turn is a JSON object")
    return value


api = FastAPI(title="sdt-ray live scoring", docs_url=None, redoc_url=None)


@api.exception_handler(LiveError)
async def _refused(request: Request, refusal: LiveError):
    return JSONResponse({"error": refusal.reason}, status_code=refusal.status)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, invalid: RequestValidationError):
    """One line: the first problem, where it is. Malformed JSON is a 400, a wrong field a 422."""
    errors = invalid.errors()
    if errors and errors[0].get("type") == "json_invalid":
        return JSONResponse({"error": "malformed JSON"}, status_code=400)
    return JSONResponse({"error": _first_problem(errors)}, status_code=422)


def _first_problem(errors: list[dict]) -> str:
    """pydantic's first error as one line, `field: message` (the `body` prefix of FastAPI's dropped)."""
    if not errors:
        return "invalid request"
    where = ".".join(str(p) for p in errors[0].get("loc", ()) if p != "body")
    return f"{where + ': ' if where else ''}{errors[0].get('msg')}"


@api.exception_handler(HTTPException)
async def _http(request: Request, problem: HTTPException):
    return JSONResponse({"error": str(problem.detail)}, status_code=problem.status_code)


@api.middleware("http")
async def _bounded_body(request: Request, call_next):
    size = request.headers.get("content-length")
    if size is not None and not size.isdigit():
        return JSONResponse({"error": "Content-Length is not a number"}, status_code=400)
    if size is not None and int(size) > MAX_BODY_BYTES:  # (a chunked body is bounded by the text limit instead)
        return JSONResponse({"error": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
    return await call_next(request)


@serve.deployment(name="LiveScoring", max_ongoing_requests=256)
@serve.ingress(api)
class LiveScoring:
    """One replica: the checkpoint and its text encoder, loaded once (live.LiveScorer)."""

    def __init__(self, settings: ServeSettings):
        import torch

        device = "cuda" if settings.gpus_per_replica > 0 and torch.cuda.is_available() else "cpu"
        self.settings = settings
        self.scorer = LiveScorer(settings.checkpoint, settings.text_model, device, max(1, int(settings.cpus_per_replica)))
        self.store = call_store(settings, self.scorer)
        self.score_batch.set_max_batch_size(settings.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(settings.batch_wait_s)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model_id": self.scorer.loaded.model_id, "max_context": self.settings.limits.max_context,
                "pid": os.getpid()}  # the replica's process: what a failover drill kills

    @api.post("/v1/calls/{call_id}/turns")
    async def add_turn(self, call_id: str, body: TurnIn, request: Request) -> dict:
        self._authorize(request.headers.get("authorization"))
        return await self._take(checked_call_id(call_id), checked_turn(body, self.settings.limits))

    @api.get("/v1/calls/{call_id}")
    async def get_call(self, call_id: str, request: Request) -> dict:
        self._authorize(request.headers.get("authorization"))
        turns = await self._store("turns", checked_call_id(call_id))
        return {"call_id": call_id, "turns": [t.to_json() for t in turns]}

    @api.delete("/v1/calls/{call_id}")
    async def end_call(self, call_id: str, request: Request, archive: bool = False) -> dict:
        """End the call; with ?archive=true, then write its rows (predictions schema) to --archive.
        The call ends first, so that no turn can join it between the archive and the end."""
        self._authorize(request.headers.get("authorization"))
        call_id = checked_call_id(call_id)
        if archive and not self.settings.archive:
            raise LiveError(409, "this server has no --archive folder to write calls to")
        turns = await self._store("end", call_id)
        try:
            written = self._archive(call_id, turns) if archive else None
        except OSError as failure:
            raise LiveError(503, f"call {call_id} ended, but its archive could not be written ({failure})") from None
        return {"call_id": call_id, "turns": len(turns), **({"archive": written} if archive else {})}

    @api.websocket("/v1/calls/{call_id}/stream")
    async def stream(self, socket: WebSocket, call_id: str) -> None:
        """One JSON turn per message in, its score (or {"error": ...}) per message out."""
        if not self._allowed(socket.headers.get("authorization")):
            await socket.close(code=1008, reason="missing or wrong token")
            return
        await socket.accept()
        try:
            while True:
                message = await socket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                try:
                    text = message.get("text")
                    if text is None:
                        raise LiveError(400, "send turns as text frames of JSON")
                    if len(text) > MAX_BODY_BYTES:
                        raise LiveError(413, f"message over {MAX_BODY_BYTES} bytes")
                    body = _validated_turn(_json_object(text))
                    reply = await self._take(checked_call_id(call_id), checked_turn(body, self.settings.limits))
                except LiveError as refusal:
                    reply = {"error": refusal.reason, "status": refusal.status}
                await socket.send_json(reply)
        except WebSocketDisconnect:
            return

    async def _take(self, call_id: str, turn: Turn) -> dict:
        begun = await self._store("begin", call_id, turn)
        if isinstance(begun, ScoredTurn):  # a retry of a turn scored already
            return begun.to_json()
        try:
            scored, vector, spoken = await self.score_batch((begun, turn))
        except Exception as failure:  # the server's fault, not the request's: free the call, ask for a retry
            await self.store.abort.remote(call_id, begun.index, turn.turn_id)
            raise LiveError(503, f"scoring failed ({type(failure).__name__}); send the turn again") from None
        return (await self._store("commit", scored, vector, spoken)).to_json()

    async def _store(self, method: str, *args):
        """A call of the calls' actor; a refusal it returns is raised here. If the actor died,
        its calls are gone: a new one is found or made (every replica finds the same) and 503 said."""
        from ray.exceptions import RayActorError

        try:
            return _raise_refusal(await getattr(self.store, method).remote(*args))
        except RayActorError:
            self.store = call_store(self.settings, self.scorer)
            raise LiveError(503, "the calls' state was lost (its actor died); open calls must start again") from None

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def score_batch(self, work: list[tuple]) -> list[tuple]:
        # In a thread, so that the replica's event loop keeps taking requests during the forward pass.
        return await asyncio.to_thread(self.scorer.score, work)

    def _archive(self, call_id: str, turns: list[ScoredTurn]) -> str:
        from . import __version__, storage

        loaded = self.scorer.loaded
        table = archive_table(turns, loaded.labels, loaded.config.modalities, loaded.model_id, __version__)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        uri = storage.join(self.settings.archive, f"{call_id}-{stamp}-{uuid.uuid4().hex[:6]}.parquet")
        storage.write_table(table, uri)
        return uri

    def _allowed(self, authorization: str | None) -> bool:
        token = self.settings.token
        return token is None or hmac.compare_digest(authorization or "", f"Bearer {token}")

    def _authorize(self, authorization: str | None) -> None:
        if not self._allowed(authorization):
            raise LiveError(401, "missing or wrong token (Authorization: Bearer TOKEN)")


def application(settings: ServeSettings):
    """The Serve application: LiveScoring with the settings' replicas and resources."""
    return LiveScoring.options(
        num_replicas=settings.replicas,
        ray_actor_options={"num_cpus": settings.cpus_per_replica, "num_gpus": settings.gpus_per_replica},
    ).bind(settings)


def app_builder(args: dict):
    """For `serve deploy` / `serve run` with a config file (cluster/serve.yaml): `args` are
    ServeSettings fields (and `limits`, a dict of LiveLimits fields). Replicas and autoscaling
    come from the file's `deployments` section."""
    args = dict(args)
    limits = LiveLimits(**args.pop("limits", {}))
    args.setdefault("token", os.environ.get("SDT_RAY_SERVE_TOKEN"))  # a secret, kept out of the file
    settings = ServeSettings(limits=limits, **args)
    check_exposure(settings.host, settings.token)
    return LiveScoring.bind(settings)


def check_settings(settings: ServeSettings) -> None:
    """Everything that can be refused before Ray starts, as one ConfigError line."""
    from .live import check_servable
    from .scoring import checkpoint_identity

    check_exposure(settings.host, settings.token)
    _, _, config = checkpoint_identity(settings.checkpoint)
    check_servable(settings.checkpoint, config, settings.text_model, settings.limits.max_context)


def start_serving(settings: ServeSettings, log=print) -> str:
    """Check the settings, then deploy on the Ray this process is connected to; returns the base URL."""
    check_settings(settings)
    return _deploy(settings, log)


def _deploy(settings: ServeSettings, log) -> str:
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application(settings), name=APP_NAME, route_prefix="/")
    url = f"http://{settings.host}:{settings.port}"
    log(f"serving {settings.checkpoint} at {url} ({settings.replicas} replica(s), context {settings.limits.max_context} turns)")
    return url


def stop_serving(settings: ServeSettings) -> None:
    """Delete this application (other Serve applications on a shared cluster keep running) and
    drop the calls' store."""
    serve.delete(APP_NAME)
    try:
        ray.kill(ray.get_actor(settings.store_name, namespace=STORE_NAMESPACE))
    except ValueError:
        pass  # never created


def serve_job(settings: ServeSettings, address: str | None = None, log=print) -> None:
    """`sdt-ray serve`: deploy, then serve until interrupted (Ctrl-C), then shut down."""
    from .session import ray_session

    check_settings(settings)  # before Ray starts
    with ray_session(address):
        _deploy(settings, log)
        log("press Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            log("stopping")
        finally:
            stop_serving(settings)

