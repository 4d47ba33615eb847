"""`sdt-ray serve` on real local Ray Serve over loopback HTTP: live scores equal `predict
--causal`, bad requests get 4xx with one line and leave the call as it was, the WebSocket
scores as HTTP does, DELETE archives in the predictions schema, and a killed replica loses no call."""

import json
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sdt_ray import storage
from sdt_ray.demo import DEMO_MODEL
from sdt_ray.importers import DEMO_CORPUS, MELD_LABELS, write_corpus
from sdt_ray.live import LiveLimits
from sdt_ray.pipelines import ExtractOptions, predict_job
from sdt_ray.scoring import PredictOptions
from sdt_ray.serve import ServeSettings, start_serving, stop_serving
from tests.helpers.processes import free_port

CHECKPOINT = str(DEMO_MODEL)  # MELD text, MiniLM features
TOKEN = "test-token"
CONTEXT = 4  # turns per score: smaller than most dialogues, so the window slides
KEYS = [("dialogue_id", "ascending"), ("utterance_index", "ascending")]


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    # Bound to every address, as a server for other machines is: so the token is required, and
    # the wrong-token test below is the real case. The tests reach it over 127.0.0.1.
    settings = ServeSettings(CHECKPOINT, host="0.0.0.0", port=free_port(), token=TOKEN, archive=str(folder / "archive"),
                             limits=LiveLimits(max_context=CONTEXT))
    start_serving(settings, log=lambda m: None)
    url = f"http://127.0.0.1:{settings.port}"
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    yield settings, client, folder
    client.close()
    stop_serving(settings)
    from ray import serve

    serve.shutdown()  # the controller and proxy too: later tests share this Ray session


def base(client) -> str:
    return str(client.base_url).rstrip("/")


def post(client, call_id, speaker, text, **more):
    return client.post(f"/v1/calls/{call_id}/turns", json={"speaker": speaker, "text": text, **more})


def test_live_scores_equal_predict_causal(served):
    """Every turn of 6 MELD test dialogues, in order through the API, against `predict --causal
    --extract` on the same checkpoint: probabilities to 1e-5, and the same labels."""
    settings, client, folder = served
    utterances = str(folder / "utterances.parquet")
    write_corpus("meld", DEMO_CORPUS, utterances, limit_dialogues=6)
    table = storage.read_table(utterances)
    table = table.filter(pc.equal(table.column("split"), "test")).sort_by(KEYS)
    dialogues = sorted(set(table.column("dialogue_id").to_pylist()))[:6]
    table = table.filter(pc.is_in(table.column("dialogue_id"), value_set=pa.array(dialogues)))
    only = str(folder / "test_utterances.parquet")
    pq.write_table(table, only)
    batch_out = str(folder / "causal")
    predict_job(CHECKPOINT, only, batch_out, PredictOptions(causal=True, max_context=CONTEXT),
                log=lambda m: None, extraction=ExtractOptions())
    batch = storage.read_table(batch_out).sort_by(KEYS)

    live = []
    for row in table.to_pylist():
        reply = post(client, f"eq-{row['dialogue_id']}", row["speaker"], row["text"])
        assert reply.status_code == 200, reply.text
        assert reply.json()["index"] == row["utterance_index"]
        live.append([reply.json()["probabilities"][c] for c in MELD_LABELS])
    expected = np.stack([batch.column(f"prob_{c}").to_numpy() for c in MELD_LABELS], axis=1)  # (n, C)
    assert len(live) == batch.num_rows >= 20
    np.testing.assert_allclose(np.array(live), expected, atol=1e-5)


def test_bad_requests_get_a_4xx_line_and_leave_the_call_as_it_was(served):
    _, client, _ = served
    assert post(client, "bad", "Ross", "Hi.").status_code == 200
    cases = {
        "malformed JSON": client.post("/v1/calls/bad/turns", content=b'{"speaker": "Ross", "text": ',
                                      headers={"content-type": "application/json"}),
        "missing speaker": client.post("/v1/calls/bad/turns", json={"text": "Hello"}),
        "1 MB of text": post(client, "bad", "Ross", "x" * 1_000_000),
        "too long a text": post(client, "bad", "Ross", "x" * 5_000),
        "unknown field": post(client, "bad", "Ross", "Hi.", mood="angry"),
        "empty text": post(client, "bad", "Ross", "   "),
        "unknown call": client.get("/v1/calls/never-opened"),
        "wrong token": httpx.post(f"{base(client)}/v1/calls/bad/turns", json={"speaker": "R", "text": "x"},
                                  headers={"Authorization": "Bearer wrong"}),
        "no token": httpx.get(f"{base(client)}/v1/calls/bad"),
        "bad call id": post(client, "a b", "Ross", "Hi."),
        "NaN seconds": client.post("/v1/calls/bad/turns", content=b'{"speaker": "R", "text": "x", "start_s": NaN}',
                                   headers={"content-type": "application/json"}),
    }
    expected = {"malformed JSON": 400, "missing speaker": 422, "1 MB of text": 413, "too long a text": 422,
                "unknown field": 422, "empty text": 422, "unknown call": 404, "wrong token": 401, "no token": 401,
                "bad call id": 422, "NaN seconds": 422}
    for case, reply in cases.items():
        assert reply.status_code == expected[case], (case, reply.status_code, reply.text)
        reason = reply.json()["error"]
        assert isinstance(reason, str) and reason and "\n" not in reason, (case, reason)
    assert "speaker" in cases["missing speaker"].json()["error"]
    turns = client.get("/v1/calls/bad").json()["turns"]
    assert [t["text"] for t in turns] == ["Hi."]  # none of the bad ones reached the call
    assert post(client, "bad", "Rachel", "Bye.").json()["index"] == 1

    assert client.delete("/v1/calls/bad").json()["turns"] == 2
    after = post(client, "bad", "Ross", "Wait!")
    assert after.status_code == 409 and "ended" in after.json()["error"]


def test_the_websocket_scores_as_http_does_and_delete_archives(served):
    from websockets.sync.client import connect

    settings, client, folder = served
    said = [("Ross", "We were on a break!"), ("Rachel", "Oh my God."), ("Ross", "Fine. Fine!")]
    over_http = [post(client, "http-call", s, t).json() for s, t in said]
    url = f"ws://127.0.0.1:{settings.port}/v1/calls/ws-call/stream"
    with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as socket:
        over_ws = []
        for speaker, text in said:
            socket.send(json.dumps({"speaker": speaker, "text": text}))
            over_ws.append(json.loads(socket.recv()))
        socket.send("{not json")
        assert json.loads(socket.recv()) == {"error": "malformed JSON", "status": 400}
    for a, b in zip(over_http, over_ws):
        assert a["label"] == b["label"] and a["index"] == b["index"]
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-6)

    ended = client.delete("/v1/calls/http-call", params={"archive": "true"}).json()
    rows = pq.read_table(ended["archive"])
    assert Path(ended["archive"]).parent == Path(settings.archive)
    assert rows.column("utterance_index").to_pylist() == [0, 1, 2]
    assert rows.column("label").to_pylist() == [t["label"] for t in over_http]
    assert {"confidence", "modality_weights", "model_id", "error"} <= set(rows.column_names)


@pytest.mark.slow
def test_a_killed_replica_loses_no_call(served):
    """SIGKILL the replica between two turns of a call: the next turn, retried until a new
    replica answers, continues the call at the next index, with the context it had."""
    _, client, _ = served
    for k in range(3):
        assert post(client, "survivor", "AB"[k % 2], f"turn {k}", turn_id=f"t{k}").status_code == 200
    replica = client.get("/healthz").json()["pid"]
    os.kill(replica, signal.SIGKILL)
    deadline, reply = time.time() + 120, None
    while time.time() < deadline:
        try:
            reply = post(client, "survivor", "B", "turn 3", turn_id="t3")
            if reply.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    assert reply is not None and reply.status_code == 200, reply and reply.text
    assert reply.json()["index"] == 3
    assert [t["turn_id"] for t in client.get("/v1/calls/survivor").json()["turns"]] == ["t0", "t1", "t2", "t3"]
    assert client.get("/healthz").json()["pid"] != replica  # a new replica took it
