"""Conversations over the real TTS server: the second turn carries the first to the LLM (HTTP, SSE,
WebSocket), what a cut reply records (barge-in with played_ms, cancel, disconnect), the limits, the
busy rule, GET/DELETE /v1/conversations, and the SQLite store across a restart and a SIGKILL."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from core.config import PROJECT_ROOT
from tests.fixtures.ollama_double import OllamaDouble
from tests.tts.conftest import VOICE, Gate, gated_factory, make_settings, serve, wait_for
from tests.tts.test_ws_tts import connected, generation, receive, send

SYSTEM = {"role": "system", "content": "Be brief."}
THREE = "Sentence number one is here. Sentence number two is here. Sentence number three is here."


def settings(voices_dir: Path, ollama: OllamaDouble, **options: Any) -> Any:
    return make_settings(voices_dir, ollama.url, llm={"system_prompt": "Be brief."}, **options)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def say(client: httpx.Client, text: str, conversation: str | None = None, path: str = "/tts") -> httpx.Response:
    body: dict[str, Any] = {"text": text, "reply": True}
    if conversation is not None:
        body["conversation_id"] = conversation
    return client.post(path, json=body)


def turns(client: httpx.Client, conversation: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/conversations/{conversation}")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == conversation
    return response.json()["turns"]


def test_the_second_turn_carries_the_first(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(settings(voices_dir, ollama)) as (_, client):
        ollama.behaviour.reply = "Nice to meet you, Sam."
        first = say(client, "My name is Sam.")
        conversation = first.headers["x-conversation-id"]
        assert "X-Conversation-Id" in first.headers["access-control-expose-headers"]
        ollama.behaviour.reply = "Your name is Sam."
        second = say(client, "What is my name?", conversation)
        assert second.status_code == 200 and second.headers["x-conversation-id"] == conversation
        recorded = turns(client, conversation)
    assert ollama.chat_requests[0]["messages"] == [SYSTEM, user("My name is Sam.")]
    assert ollama.chat_requests[1]["messages"] == [
        SYSTEM,
        user("My name is Sam."),
        assistant("Nice to meet you, Sam."),
        user("What is my name?"),
    ]
    assert recorded == [
        {"user": "My name is Sam.", "assistant": "Nice to meet you, Sam.", "interrupted": False},
        {"user": "What is my name?", "assistant": "Your name is Sam.", "interrupted": False},
    ]


def test_each_reply_without_an_id_starts_a_new_conversation_and_spoken_text_has_none(
    voices_dir: Path, ollama: OllamaDouble
) -> None:
    with serve(settings(voices_dir, ollama)) as (_, client):
        one, two = say(client, "Hello."), say(client, "Hello.")
        spoken = client.post("/tts", json={"text": "Just read this.", "reply": False})
        refused = client.post("/tts", json={"text": "Hi", "reply": False, "conversation_id": one.headers["x-conversation-id"]})
    assert one.headers["x-conversation-id"] != two.headers["x-conversation-id"]
    assert ollama.chat_requests[1]["messages"] == [SYSTEM, user("Hello.")]
    assert spoken.status_code == 200 and "x-conversation-id" not in spoken.headers
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "invalid_request" and "reply true" in refused.json()["error"]["message"]


def test_unknown_deleted_and_malformed_ids(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(settings(voices_dir, ollama)) as (_, client):
        conversation = say(client, "Hello.").headers["x-conversation-id"]
        assert len(turns(client, conversation)) == 1
        deleted = client.delete(f"/v1/conversations/{conversation}")
        after = client.get(f"/v1/conversations/{conversation}")
        again = client.delete(f"/v1/conversations/{conversation}")
        continued = say(client, "Hello again.", conversation)
        unknown = say(client, "Hello.", "never-given-out-1234")
        malformed = client.get("/v1/conversations/a%20b")
    assert deleted.status_code == 204 and deleted.content == b""
    assert after.status_code == 404 and again.status_code == 404
    error = after.json()["error"]  # the /v1 (OpenAI) shape
    assert error["code"] == "conversation_not_found" and error["type"] == "invalid_request_error"
    assert continued.status_code == 404 and unknown.status_code == 404
    message = unknown.json()["error"]["message"]
    assert "conversations.idle_ttl_s" in message and "leave conversation_id out" in message
    assert malformed.status_code == 400 and malformed.json()["error"]["param"] == "conversation_id"


def test_streams_and_events_carry_the_id(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(settings(voices_dir, ollama)) as (_, client):
        stream = say(client, "My name is Sam.", path="/tts/stream")
        conversation = stream.headers["x-conversation-id"]
        sse = client.get("/tts/sse", params={"text": "What is my name?", "reply": "true", "conversation_id": conversation})
        posted = say(client, "And again?", conversation, path="/tts/sse")
        recorded = turns(client, conversation)
    assert sse.headers["x-conversation-id"] == conversation
    assert sse.text.startswith(f'event: conversation\ndata: {{"id": "{conversation}"}}\n\n')
    assert posted.headers["x-conversation-id"] == conversation
    assert [turn["user"] for turn in recorded] == ["My name is Sam.", "What is my name?", "And again?"]
    assert ollama.chat_requests[2]["messages"][1:5] == [
        user("My name is Sam."),
        assistant("Hello! I am your assistant."),
        user("What is my name?"),
        assistant("Hello! I am your assistant."),
    ]


def test_limits_drop_the_oldest_turns_and_cap_the_history(voices_dir: Path, ollama: OllamaDouble) -> None:
    reply = "Hello! I am your assistant."
    limits = {"max_turns": 2, "max_history_chars": len("Turn three.") + len(reply)}
    with serve(settings(voices_dir, ollama, conversations=limits)) as (_, client):
        conversation = say(client, "Turn one.").headers["x-conversation-id"]
        for text in ("Turn two.", "Turn three.", "Turn four."):
            say(client, text, conversation)
        recorded = turns(client, conversation)
    assert [turn["user"] for turn in recorded] == ["Turn three.", "Turn four."]
    # The third turn had turns one and two kept, but room for the newest only; the fourth likewise.
    assert ollama.chat_requests[2]["messages"] == [SYSTEM, user("Turn two."), assistant(reply), user("Turn three.")]
    assert ollama.chat_requests[3]["messages"] == [SYSTEM, user("Turn three."), assistant(reply), user("Turn four.")]


def test_a_second_turn_on_a_busy_conversation_is_refused(voices_dir: Path, ollama: OllamaDouble) -> None:
    gate = Gate()
    with serve(settings(voices_dir, ollama), engine_factory=gated_factory(gate)) as (server, client):
        gate.open.set()
        conversation = say(client, "Hello.").headers["x-conversation-id"]
        gate.open.clear()
        gate.entered.clear()
        held: dict[str, httpx.Response] = {}
        first = threading.Thread(target=lambda: held.update(response=say(client, "First.", conversation)))
        first.start()
        assert gate.entered.wait(10)
        busy = say(client, "Second.", conversation)
        gate.open.set()
        first.join(30)
        after = say(client, "Third.", conversation)
        recorded = turns(client, conversation)
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "conversation_busy" and "cancel" in busy.json()["error"]["message"]
    assert held["response"].status_code == 200 and after.status_code == 200
    assert [turn["user"] for turn in recorded] == ["Hello.", "First.", "Third."]


def _first_chunk_then(ws: Any, gate: Gate) -> dict[str, Any]:
    """Starts a reply of three sentences; returns the first audio_chunk once the second sentence is
    held in its worker."""
    send(ws, "text_input", text="Tell me three things.", reply=True)
    messages, _ = generation(ws, until=("audio_chunk",))
    assert gate.entered.wait(10)
    return messages[-1]


def test_a_barge_in_after_one_of_three_fragments_records_only_what_was_played(voices_dir: Path, ollama: OllamaDouble) -> None:
    ollama.behaviour.reply = THREE
    gate = Gate(free=1)
    options = {"first_fragment_min_words": 5, "first_fragment_max_words": 5}
    with serve(settings(voices_dir, ollama, **options), engine_factory=gated_factory(gate)) as (server, client):
        with connected(server) as ws:
            chunk = _first_chunk_then(ws, gate)
            played_ms = chunk["samples"] / chunk["sample_rate"] * 1000 / 2  # halfway through the first
            send(ws, "cancel_generation", played_ms=played_ms)
            gate.open.set()
            messages, _ = generation(ws, until=("generation_cancelled",))
            conversation = messages[-1]["conversation_id"]
            recorded = turns(client, conversation)
    assert chunk["text_chunk"] == "Sentence number one is here."
    assert recorded == [{"user": "Tell me three things.", "assistant": "Sentence number one is here.", "interrupted": True}]


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_barge_in_while_a_completed_reply_still_plays_records_only_what_was_played(
    voices_dir: Path, ollama: OllamaDouble, tmp_path: Path, store: str
) -> None:
    ollama.behaviour.reply = THREE
    options = {"first_fragment_min_words": 5, "first_fragment_max_words": 5}
    config = settings(voices_dir, ollama, conversations={"store": store}, data_dir=tmp_path, **options)
    with serve(config) as (server, client):
        with connected(server) as ws:
            send(ws, "text_input", text="Tell me three things.", reply=True)
            messages, _ = generation(ws)
            complete = messages[-1]
            assert complete["type"] == "generation_complete" and complete["chunks"] == 3
            conversation, gid = complete["conversation_id"], complete["generation_id"]
            assert turns(client, conversation)[0]["interrupted"] is False
            first = next(m for m in messages if m["type"] == "audio_chunk")
            played_ms = first["samples"] / first["sample_rate"] * 1000 + 1  # into the second sentence
            send(ws, "cancel_generation", generation_id=gid, played_ms=played_ms)
            truncated = receive(ws)
            recorded = turns(client, conversation)
            send(ws, "cancel_generation", generation_id=gid + 1, played_ms=0)
            unknown = receive(ws)
            send(ws, "cancel_generation", generation_id=gid)
            no_position = receive(ws)
    heard = "Sentence number one is here. Sentence number two is here."
    assert truncated == {
        "type": "generation_truncated",
        "generation_id": gid,
        "conversation_id": conversation,
        "heard": heard,
        "interrupted": True,
    }
    assert recorded == [{"user": "Tell me three things.", "assistant": heard, "interrupted": True}]
    assert unknown["type"] == "error" and unknown["code"] == "nothing_to_cancel"
    assert no_position["code"] == "nothing_to_cancel" and "played_ms" in no_position["message"]


def test_a_truncation_never_rewrites_a_newer_turn(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(settings(voices_dir, ollama)) as (server, client):
        with connected(server) as ws:
            ollama.behaviour.reply = "First answer here."
            send(ws, "text_input", text="One.", reply=True)
            first, _ = generation(ws)
            conversation = first[-1]["conversation_id"]
            # Another client continues the conversation before this one reports its playback.
            ollama.behaviour.reply = "Second answer here."
            assert say(client, "Two.", conversation).status_code == 200
            send(ws, "cancel_generation", generation_id=first[-1]["generation_id"], played_ms=0)
            truncated = receive(ws)
            recorded = turns(client, conversation)
    assert truncated["heard"] is None and truncated["interrupted"] is None
    assert [turn["assistant"] for turn in recorded] == ["First answer here.", "Second answer here."]


def test_a_cut_reply_without_played_ms_keeps_what_was_sent_and_played_zero_keeps_nothing(
    voices_dir: Path, ollama: OllamaDouble
) -> None:
    ollama.behaviour.reply = THREE
    gate = Gate(free=1)
    options = {"first_fragment_min_words": 5, "first_fragment_max_words": 5}
    with serve(settings(voices_dir, ollama, **options), engine_factory=gated_factory(gate)) as (server, client):
        with connected(server) as ws:
            _first_chunk_then(ws, gate)
            send(ws, "cancel_generation")
            gate.open.set()
            cancelled, _ = generation(ws, until=("generation_cancelled",))
            gate.open.clear()
            gate.entered.clear()
            gate.sentences.clear()
            _first_chunk_then(ws, gate)
            send(ws, "cancel_generation", played_ms=0)
            gate.open.set()
            generation(ws, until=("generation_cancelled",))
            recorded = turns(client, cancelled[-1]["conversation_id"])
    assert recorded == [
        {"user": "Tell me three things.", "assistant": "Sentence number one is here.", "interrupted": True},
        {"user": "Tell me three things.", "assistant": "", "interrupted": True},
    ]
    # Nothing heard of the second reply: the LLM is not told it said anything.
    assert [m["role"] for m in ollama.chat_requests[-1]["messages"]] == ["system", "user", "assistant", "user"]


def test_a_client_that_disconnects_keeps_what_it_was_sent(voices_dir: Path, ollama: OllamaDouble) -> None:
    ollama.behaviour.reply = " ".join(f"Sentence number {i} is here." for i in range(40))
    ollama.behaviour.tokens = "words"
    ollama.behaviour.token_rate = 50.0  # still streaming when the client leaves
    gate = Gate(free=1)
    with serve(settings(voices_dir, ollama), engine_factory=gated_factory(gate)) as (server, client):
        with connected(server) as ws:
            send(ws, "new_conversation")
            conversation = receive(ws)["conversation_id"]
            chunk = _first_chunk_then(ws, gate)
        wait_for(lambda: ollama.aborted_streams == 1, what=lambda: "the LLM stream was not stopped")
        gate.open.set()
        wait_for(lambda: client.get(f"/v1/conversations/{conversation}").status_code == 200)
        recorded = turns(client, conversation)
    assert recorded == [{"user": "Tell me three things.", "assistant": chunk["text_chunk"], "interrupted": True}]


def test_a_socket_keeps_one_conversation_and_can_continue_or_start_one(voices_dir: Path, ollama: OllamaDouble) -> None:
    with serve(settings(voices_dir, ollama)) as (server, client):
        with connected(server) as ws:
            send(ws, "text_input", text="My name is Sam.", reply=True)
            first, _ = generation(ws)
            send(ws, "text_input", text="What is my name?", reply=True)
            second, _ = generation(ws)
        conversation = first[-1]["conversation_id"]
        with connected(server) as ws:  # a reload: the page names the conversation it had
            send(ws, "text_input", text="Still there?", reply=True, conversation_id=conversation)
            third, _ = generation(ws)
            send(ws, "new_conversation")
            started = receive(ws)
            send(ws, "text_input", text="Who am I?", reply=True)
            fresh, _ = generation(ws)
            send(ws, "text_input", text="Hi", reply=True, conversation_id="no-such-conversation")
            refused = receive(ws)
        recorded = turns(client, conversation)
    assert second[-1]["conversation_id"] == third[0]["conversation_id"] == third[-1]["conversation_id"] == conversation
    assert started["type"] == "conversation_started" and started["conversation_id"] != conversation
    assert fresh[-1]["conversation_id"] == started["conversation_id"]
    assert [turn["user"] for turn in recorded] == ["My name is Sam.", "What is my name?", "Still there?"]
    assert len(ollama.chat_requests[2]["messages"]) == 6 and ollama.chat_requests[3]["messages"] == [SYSTEM, user("Who am I?")]
    assert refused["type"] == "error" and refused["code"] == "conversation_not_found"


def test_the_sqlite_store_survives_a_restart(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    store = {"conversations": {"store": "sqlite"}, "data_dir": str(tmp_path / "data")}
    with serve(settings(voices_dir, ollama, **store)) as (_, client):
        conversation = say(client, "My name is Sam.").headers["x-conversation-id"]
    assert (tmp_path / "data" / "conversations.sqlite3").is_file()
    with serve(settings(voices_dir, ollama, **store)) as (_, client):
        recorded = turns(client, conversation)
        say(client, "What is my name?", conversation)
    assert recorded == [{"user": "My name is Sam.", "assistant": "Hello! I am your assistant.", "interrupted": False}]
    assert ollama.chat_requests[1]["messages"][1:3] == [user("My name is Sam."), assistant("Hello! I am your assistant.")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_sigkill_mid_turn_leaves_no_half_turn(voices_dir: Path, ollama: OllamaDouble, tmp_path: Path) -> None:
    port = _free_port()
    config = {
        "data_dir": str(tmp_path / "data"),
        "conversations": {"store": "sqlite"},
        "logging": {"level": "warning"},
        "tts": {"port": port, "voices_dir": str(voices_dir), "voice": VOICE},
        "llm": {"url": ollama.url},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "tts.server", "--config", str(path)],
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_for(lambda: _answers(client), timeout=60, what=lambda: "the TTS service did not become ready")
            first = say(client, "My name is Sam.")
            assert first.status_code == 200, first.text
            conversation = first.headers["x-conversation-id"]
            ollama.behaviour.reply = " ".join(f"Sentence number {i} is here." for i in range(40))
            ollama.behaviour.tokens = "words"
            ollama.behaviour.token_rate = 20.0
            with client.stream("POST", "/tts/stream", json={"text": "Talk.", "reply": True, "conversation_id": conversation}) as response:
                next(response.iter_raw())  # the second turn is speaking
                process.kill()
                process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    database = sqlite3.connect(tmp_path / "data" / "conversations.sqlite3")
    try:
        assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = database.execute("SELECT user, assistant, interrupted FROM turns WHERE conversation = ?", (conversation,)).fetchall()
    finally:
        database.close()
    assert rows == [("My name is Sam.", "Hello! I am your assistant.", 0)]


def _answers(client: httpx.Client) -> bool:
    """The service answers and its voice has loaded."""
    try:
        return client.get("/health").json()["loading"] is False
    except httpx.HTTPError:
        time.sleep(0.05)
        return False
