"""`charrnn serve` through clients no one here wrote: OpenAI's Python package, curl and simonw's
llm, against a live server on a free loopback port (a `charrnn serve` process), and the app
from charrnn.serve mounted in another app. What they check: the response shapes, n and lists
of prompts, stop sequences, seeds that give `charrnn sample --rng-seed`'s text, streamed or
not, every class of error, the API key, a client that hangs up, SIGTERM during streams, and
that the batching engine draws what the sampler draws for every cell."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import PERIOD, REPO, cli, user_error

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
openai = pytest.importorskip("openai", reason="the openai client is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

import charrnn  # noqa: E402
from charrnn.api import Model  # noqa: E402
from charrnn.model import init_params  # noqa: E402
from charrnn.serve import Limits, create_app  # noqa: E402

KEY = "test-key"
CHARRNN = [sys.executable, "-m", "charrnn"]


# ---- a live server ----


class Server:
    """A `charrnn serve` process on a free port, its stderr read as it comes (its log)."""

    def __init__(self, checkpoint: Path, *flags: str):
        self.proc = subprocess.Popen(
            [*CHARRNN, "serve", str(checkpoint), "--port", "0", *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "CHARRNN_API_KEY": ""} if "--api-key" in flags else os.environ,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(60) or self.proc.poll() is not None:
            self.proc.kill()
            raise AssertionError("the server did not start:\n" + "".join(self.lines))
        first = self.lines[0]
        self.port = int(first.split("http://127.0.0.1:")[1].split("/")[0])
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("Serving "):
                self.ready.set()
        self.ready.set()

    def client(self, key: str = KEY, **kw) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60, **kw
        )

    def health(self) -> dict:
        return httpx.get(self.url + "/health").json()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture(scope="module")
def server(overfit):
    """The overfit model (PERIOD repeated) served with a key and small limits."""
    s = Server(
        overfit,
        *("--api-key", KEY, "--max-requests", "4", "--max-n", "6", "--max-body", "4096"),
        *("--max-tokens", "200000", "--name", "periodic"),
    )
    yield s
    assert s.stop() == 0
    assert "Traceback" not in "".join(s.lines)


def post(server: Server, body, key: str = KEY, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return httpx.post(server.url + "/v1/completions", content=content, headers=headers, **kw)


def sampled(checkpoint: Path, prompt: str, length: int, *flags: str) -> str:
    """What `charrnn sample` draws after prompt, without the prompt."""
    result = cli(
        "sample", "--checkpoint", checkpoint, "--seed", prompt, "--length", length,
        "--no-seed-echo", "--json", "-q", *flags,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)[0]["text"]


def streamed(stream) -> tuple[dict[int, str], dict[int, str]]:
    """Texts and finish reasons by choice index, from the openai client's stream."""
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for event in stream:
        for c in event.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return texts, finish


# ---- what a client gets ----


def test_a_completion_has_openai_s_shape_and_counts_characters(server):
    out = server.client().completions.create(
        model="periodic", prompt="abc", max_tokens=21, temperature=0
    )
    assert out.object == "text_completion" and out.model == "periodic"
    assert out.id.startswith("cmpl-") and out.created > 0
    [choice] = out.choices
    assert choice.text == (PERIOD * 4)[3:24] and choice.finish_reason == "length"
    assert choice.index == 0
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (3, 21)
    assert out.usage.total_tokens == 24
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["periodic"]


def test_n_choices_for_each_prompt_of_a_list(server):
    out = server.client().completions.create(
        model="periodic", prompt=["ab", "efg"], n=3, max_tokens=5, temperature=0, echo=True
    )
    assert [c.index for c in out.choices] == list(range(6))
    assert [c.text for c in out.choices] == ["abcdefg"] * 3 + ["efghabcd"] * 3
    assert out.usage.completion_tokens == 30 and out.usage.prompt_tokens == 5


def test_a_stop_sequence_ends_the_text_before_it(server, overfit):
    c = server.client()
    for stop, expected in [("h", "defg"), (["gh", "f"], "de"), ("gha", "def")]:
        out = c.completions.create(
            model="periodic", prompt="abc", max_tokens=50, temperature=0, stop=stop
        )
        assert (out.choices[0].text, out.choices[0].finish_reason) == (expected, "stop")
        # streamed, the characters that could start the stop sequence are held back
        stream = c.completions.create(
            model="periodic", prompt="abc", max_tokens=50, temperature=0, stop=stop, stream=True
        )
        assert streamed(stream) == ({0: expected}, {0: "stop"})
        assert out.usage.completion_tokens == len(expected)
        stops = [stop] if isinstance(stop, str) else stop
        flags = [f for s in stops for f in ("--stop", s)]
        assert sampled(overfit, "abc", 50, "--argmax", *flags) == expected  # sample --stop's


def test_a_seed_gives_charrnn_sample_s_text_streamed_or_not(server, overfit):
    settings = {"temperature": 1.6, "top_p": 0.95, "seed": 11}
    expected = sampled(overfit, "abc", 300, "--temperature", "1.6", "--top-p", "0.95",
                       "--rng-seed", "11")  # fmt: skip
    assert len(set(expected)) > 4  # hot enough to leave the period: the seed matters
    c = server.client()
    plain = c.completions.create(model="periodic", prompt="abc", max_tokens=300, **settings)
    assert plain.choices[0].text == expected
    stream = c.completions.create(
        model="periodic", prompt="abc", max_tokens=300, stream=True, **settings
    )
    assert streamed(stream) == ({0: expected}, {0: "length"})
    # n > 1 draws the same as --num-samples: the n rows share one generator, as in sample
    result = cli(
        "sample", "--checkpoint", overfit, "--seed", "abc", "--length", 50, "--num-samples", 3,
        "--top-k", 3, "--rng-seed", 5, "--no-seed-echo", "--json", "-q",
    )  # fmt: skip
    out = c.completions.create(
        model="periodic", prompt="abc", max_tokens=50, n=3, top_p=None, seed=5,
        extra_body={"top_k": 3},
    )  # fmt: skip
    assert [ch.text for ch in out.choices] == [s["text"] for s in json.loads(result.stdout)]


def test_curl_reads_the_raw_event_stream(server):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = {"prompt": "ab", "max_tokens": 12, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    out = subprocess.run(
        [curl, "-sN", "-H", f"Authorization: Bearer {KEY}", "-d", json.dumps(body),
         server.url + "/v1/completions"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    events = [e for e in out.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == (PERIOD * 2)[2:14]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12


def test_llm_the_command_line_tool_talks_to_it(server, tmp_path):
    llm = Path(sys.executable).with_name("llm")
    if not llm.exists():
        pytest.skip("llm is not installed")
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: charrnn\n  model_name: periodic\n  api_base: {server.url}/v1\n"
        "  api_key_name: charrnn\n  completion: true\n",
        encoding="utf-8",
    )
    (tmp_path / "keys.json").write_text(json.dumps({"charrnn": KEY}), encoding="utf-8")
    out = subprocess.run(
        [str(llm), "-m", "charrnn", "abc", "-o", "max_tokens", "10", "-o", "temperature", "0",
         "--no-log"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "LLM_USER_PATH": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "defghabcde"


# ---- refusals ----


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        (b'{"prompt": "ab",', 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "must be a JSON object"),
        (b'{"prompt": "\xff"}', 400, None, "not valid JSON (not UTF-8)"),
        (b"[" * 100_0 + b"]" * 100_0, 400, None, "not valid JSON"),
        ({"prompt": "ab", "max_tokens": "x"}, 400, "max_tokens", "must be an integer"),
        ({"prompt": "ab", "max_tokens": True}, 400, "max_tokens", "must be an integer"),
        ({"prompt": "ab", "max_tokens": 300_000}, 400, "max_tokens", "from 0 to 200000"),
        ({"prompt": "ab", "temperature": -1}, 400, "temperature", "must be a number >= 0"),
        ({"prompt": "ab", "top_p": 0}, 400, "top_p", "must be a number > 0"),
        ({"prompt": "ab", "n": 7}, 400, "n", "from 1 to 6"),
        ({"prompt": ["a", "b", "c"], "n": 3}, 400, "n", "at most 6 choices"),
        ({"prompt": [1, 2]}, 400, "prompt", "token ids are not supported"),
        ({"prompt": "abc\u00e9xyz!"}, 400, "prompt", "'!', 'x', 'y', 'z', '\u00e9'"),
        ({"prompt": "ab", "stop": ["a"] * 5}, 400, "stop", "at most 4 strings"),
        ({"prompt": "ab", "stream": "yes"}, 400, "stream", "must be true or false"),
        ({"prompt": "ab", "seed": -1}, 400, "seed", "from 0 to"),
        ({"prompt": "ab", "logprobs": 2}, 400, "logprobs", "not supported"),
        ({"prompt": "ab", "temprature": 1}, 400, "temprature", "unrecognized request field"),
        ({"prompt": "ab", "model": "gpt-4"}, 404, "model", "does not exist"),
        ({"prompt": "a" * 5000}, 413, None, "over 4096 bytes"),
    ],
)
def test_every_bad_request_gets_an_openai_error(server, body, status, param, words):
    r = post(server, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_the_openai_client_raises_its_own_errors(server):
    c = server.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.completions.create(model="gpt-4", prompt="ab")
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        c.completions.create(model="periodic", prompt="ab?")
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").completions.create(model="periodic", prompt="ab")
    r = httpx.get(server.url + "/v1/models")  # no key at all
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    assert server.health()["status"] == "ok"  # /health needs no key
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]["message"]
    # nothing a client sent stopped the server or printed a traceback
    assert server.proc.poll() is None and "Traceback" not in "".join(server.lines)


def test_requests_beyond_the_limit_in_flight_get_429(server):
    """Four clients that send half a body each hold the four places; a fifth is refused."""
    held = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        held.append(s)
    _until(lambda: server.health()["requests_in_flight"] == 4)
    with pytest.raises(openai.RateLimitError, match="in flight"):
        server.client().completions.create(model="periodic", prompt="ab")
    for s in held:
        s.close()
    _until(lambda: server.health()["requests_in_flight"] == 0)


def _until(condition, timeout: float = 20.0) -> None:
    """Wait for something the server does on its own (a liveness bound, not a speed test)."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "the server did not get there"
        time.sleep(0.02)


def test_a_client_that_hangs_up_frees_its_row(server):
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        json={"prompt": "ab", "max_tokens": 200_000, "stream": True, "temperature": 0},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as r:
        assert r.status_code == 200
        lines = r.iter_lines()  # kept: a dropped iterator would close the response
        assert next(lines).startswith("data: ")
        assert server.health()["rows_in_flight"] == 1, "".join(server.lines[-5:])
    _until(lambda: server.health()["rows_in_flight"] == 0)
    _until(lambda: server.health()["requests_in_flight"] == 0)
    drawn = server.health()["characters"]
    time.sleep(0.2)
    # the row left the batch: nothing more is drawn, and far fewer than the 200,000 asked for
    assert server.health()["characters"] == drawn and drawn < 190_000


# ---- the command itself ----


def test_sigterm_ends_streams_in_flight_and_exits_0(overfit):
    s = Server(overfit, "--grace", "0.3", "--max-tokens", "1000000")
    streams = [
        s.client().completions.create(
            model="run", prompt="ab", max_tokens=1_000_000, temperature=0, stream=True
        )
        for _ in range(3)
    ]
    firsts = [next(iter(st)) for st in streams]
    assert all(f.choices[0].text for f in firsts)
    assert s.health()["rows_in_flight"] == 3
    s.proc.send_signal(signal.SIGTERM)
    for st in streams:  # each stream ends: its last event says abort, then [DONE]
        texts, finish = streamed(st)
        assert finish == {0: "abort"} and 0 < len(texts[0]) < 1_000_000
    assert s.proc.wait(30) == 0
    log = "".join(s.lines)
    assert log.endswith("Stopped.\n") and "Traceback" not in log
    assert log.count("POST /v1/completions 200") == 3 and "finish=abort" in log
    with pytest.raises(OSError):  # it no longer listens
        socket.create_connection(("127.0.0.1", s.port), timeout=2)


def test_without_the_extra_serve_says_how_to_install_it(overfit, tmp_path):
    fake = tmp_path / "fastapi"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'fastapi'\", name='fastapi')\n"
    )
    out = subprocess.run(
        [*CHARRNN, "serve", str(overfit)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (
        "Error: charrnn serve needs the serve extra (fastapi is missing); install it with "
        "pip install 'charrnn[serve]'\n"
    )


def test_serve_refuses_a_busy_port_and_bad_flags(overfit):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = user_error(cli("serve", overfit, "--port", port, "-q"))
    assert message.startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert "choose another --port" in message
    assert "not found" in user_error(cli("serve", "missing.npz", "-q"))
    assert cli("serve", overfit, "--port", 70000).exit_code == 2
    assert cli("serve", overfit, "--api-key", " ").exit_code == 2


# ---- the app in-process ----


def test_the_app_mounts_in_another_app(overfit):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    parent = FastAPI()
    lines: list[str] = []
    parent.mount("/lm", create_app(charrnn.load(overfit), name="p", log=lines.append))
    with TestClient(parent) as client:
        r = client.post(
            "/lm/v1/completions", json={"prompt": "gh", "max_tokens": 6, "temperature": 0}
        )
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "abcdef"
        assert client.get("/lm/health").json()["rows_in_flight"] == 0
    assert len(lines) == 2 and lines[0].endswith("choices=1 chars=6 finish=length")


def test_an_exported_safetensors_file_serves_the_same_text(overfit, tmp_path):
    pytest.importorskip("safetensors", reason="the export extra is not installed")
    from fastapi.testclient import TestClient

    exported = tmp_path / "periodic.safetensors"
    result = cli("export", overfit, "--format", "safetensors", "-o", exported, "-q")
    assert result.exit_code == 0, result.output
    body = {"prompt": "abc", "max_tokens": 80, "temperature": 1.7, "seed": 3}
    texts = []
    for path in (overfit, exported):
        with TestClient(create_app(charrnn.load(path))) as client:
            texts.append(client.post("/v1/completions", json=body).json()["choices"][0]["text"])
    assert texts[0] == texts[1] == sampled(overfit, "abc", 80, "--temperature", "1.7",
                                           "--rng-seed", "3")  # fmt: skip


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_the_engine_draws_what_the_sampler_draws(cell):
    """Two layers of each cell, several requests in flight at once with different settings:
    each text is Model.sample's for the same seed (bit for bit when the batch is one request;
    batched, BLAS rounding may differ in the last bit, so this model is one whose scores have
    no near-ties)."""
    vocab = list("abcdefghij .,\n")
    params = init_params(len(vocab), 24, np.random.default_rng(3), init_scale=0.4, cell=cell,
                         num_layers=2)  # fmt: skip
    model = Model(params, vocab, {}, 0)
    settings = [
        {"temperature": 0.7, "seed": 1},
        {"temperature": 1.8, "top_k": 5, "seed": 2},
        {"top_p": 0.9, "seed": 3, "n": 2},
        {"temperature": 0, "seed": 4},
    ]
    from fastapi.testclient import TestClient

    with TestClient(create_app(model, limits=Limits(max_n=4))) as client:
        results = [None] * len(settings)

        def ask(i):
            body = {"prompt": "abc, ", "max_tokens": 120, **settings[i]}
            results[i] = client.post("/v1/completions", json=body).json()

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(settings))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for got, s in zip(results, settings, strict=True):
        n = s.get("n", 1)
        expected = model.sample(
            "abc, ", 120, temperature=s.get("temperature") or 1.0, top_k=s.get("top_k"),
            top_p=s.get("top_p"), argmax=s.get("temperature") == 0, num_samples=n,
            rng_seed=s["seed"], echo_seed=False,
        )  # fmt: skip
        assert [c["text"] for c in got["choices"]] == ([expected] if n == 1 else expected)


def test_a_records_model_s_end_of_record_ends_a_choice_with_stop():
    """A model trained on records has one output past its vocabulary, the end of a record:
    drawing it ends the choice as `charrnn sample` ends the sample ("end"), OpenAI's "stop"."""
    from fastapi.testclient import TestClient

    vocab = list("abcdef")
    params = init_params(len(vocab) + 1, 12, np.random.default_rng(0), init_scale=0.3)
    params["by"][-1] = 2.5  # the end is likely: drawn within a few characters
    model = Model(params, vocab, {}, 0)
    # (a stop string the model cannot draw: on main, samples() looks for the end with stops)
    expected = model.samples("ab", 400, rng_seed=9, echo_seed=False, stop=["z"])[0]
    assert expected.ended == "end" and len(expected.text) < 100
    with TestClient(create_app(model)) as client:
        body = {"prompt": "ab", "max_tokens": 400, "seed": 9}
        [choice] = client.post("/v1/completions", json=body).json()["choices"]
    assert (choice["text"], choice["finish_reason"]) == (expected.text, "stop")
