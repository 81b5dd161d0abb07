"""The completions server, started as a user starts it and called with the official openai client."""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import httpx
import openai
import pytest
import torch

from gpt.batching import Batcher, Job
from gpt.errors import UserError
from gpt.generate import generate_text, load
from gpt.serve import main as serve_main
from gpt.tokenizer import CharTokenizer

from conftest import ROOT, env, free_port, random_export

BLOCK = 32
MAX_BATCH = 8
NAME = "tiny"


@pytest.fixture(scope="module")
def export(tmp_path_factory, shakespeare):
    """A random GPT (sharp weights, char vocabulary of Tiny Shakespeare) as a portable export."""
    folder = tmp_path_factory.mktemp("serve")
    return random_export(folder / "model", CharTokenizer.from_text(shakespeare), BLOCK, sharp=True)


@pytest.fixture(scope="module")
def server(export):
    """``python -m gpt.serve`` on a free loopback port; yields its base URL."""
    port = free_port()
    args = ["--out_dir", str(export), "--port", str(port), "--max_batch", str(MAX_BATCH), "--model_name", NAME]
    log = export.parent / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gpt.serve", *args], cwd=ROOT, env=env(), stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()  # no request made the server fail


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local(export):
    """The same model in this process, to compute what sample.py would print (one thread, as the server:
    a tiny model is slow with threads that wait for busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tokenizer, _ = load(str(export), "cpu", "float32")
    yield model, tokenizer
    torch.set_num_threads(threads)


def expected(local, prompt: str, max_tokens: int, n: int = 1, temperature: float = 1.0, top_k: int = 0, seed=0):
    model, tokenizer = local
    texts = generate_text(model, tokenizer, prompt, max_tokens, n, temperature, top_k, 1.0, seed)
    return [t[len(prompt) :] for t in texts]


def healthy(url: str) -> bool:
    return httpx.get(f"{url}/health").json()["status"] == "ok"


def test_models_and_a_completion_as_sample_py_gives_it(client, local):
    assert [m.id for m in client.models.list().data] == [NAME]
    out = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=20, temperature=0.8, seed=3)
    assert out.choices[0].text == expected(local, "ROMEO:", 20, temperature=0.8, seed=3)[0]
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == (6, 20, 26)
    greedy = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=20, temperature=0)
    assert greedy.choices[0].text == expected(local, "ROMEO:", 20, temperature=0)[0] != out.choices[0].text


def test_streamed_pieces_join_to_the_text_not_streamed(client):
    kw = dict(model=NAME, prompt="To be", max_tokens=30, seed=5, extra_body={"top_k": 10})  # top_k: an extension
    whole = client.completions.create(**kw)
    pieces = list(client.completions.create(**kw, stream=True))
    assert len(pieces) > 1 and pieces[-1].choices[0].finish_reason == "length"
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    last = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))[-1]
    assert last.choices == [] and (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 30)


def test_stop_strings_cut_the_text_alike_streamed_or_not(client, local):
    free = expected(local, "KING:", 40, n=3, seed=9)
    stop = free[0][12:14]  # two characters the first sample writes (maybe earlier, too)
    kw = dict(model=NAME, prompt="KING:", max_tokens=40, n=3, seed=9, stop=[stop, "\x00never"])
    out = client.completions.create(**kw)
    cut = [(t[: t.index(stop)], "stop") if stop in t else (t, "length") for t in free]
    assert [(c.text, c.finish_reason) for c in out.choices] == cut
    pieces = [p.choices[0] for p in client.completions.create(**kw, stream=True)]
    for c in out.choices:  # each sample's pieces join to its text, and its finish reason is told once
        assert "".join(p.text for p in pieces if p.index == c.index) == c.text
        assert [p.finish_reason for p in pieces if p.index == c.index and p.finish_reason] == [c.finish_reason]


def test_n_samples_and_a_list_of_prompts(client, local):
    out = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=15, n=3, seed=4, extra_body={"top_k": 8})
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert [c.text for c in out.choices] == expected(local, "ROMEO:", 15, n=3, top_k=8, seed=4)
    assert len({c.text for c in out.choices}) == 3
    prompts = ["ROMEO:", "JULIET: O"]
    out = client.completions.create(model=NAME, prompt=prompts, max_tokens=10, n=2, seed=1)
    assert [c.text for c in out.choices] == [t for p in prompts for t in expected(local, p, 10, n=2, seed=1)]
    assert out.usage.prompt_tokens == 6 + 9 and out.usage.completion_tokens == 4 * 10


def test_a_prompt_longer_than_the_context(client, local):
    prompt = "First Citizen: Before we proceed any further, hear me speak."  # 62 characters, context 32
    out = client.completions.create(model=NAME, prompt=prompt, max_tokens=40, temperature=0)
    assert out.choices[0].text == expected(local, prompt, 40, temperature=0)[0]


BAD = [  # request fields -> the parameter the error names, a word of its message
    ({"prompt": "a", "max_tokens": -1}, "max_tokens", "between 0 and"),
    ({"prompt": "a", "max_tokens": 10**9}, "max_tokens", "between 0 and"),
    ({"prompt": "a", "top_p": 0}, "top_p", "(0, 1]"),
    ({"prompt": "a", "top_p": 1.5}, "top_p", "(0, 1]"),
    ({"prompt": "a", "n": 0}, "n", "between 1 and"),
    ({"prompt": "a", "n": MAX_BATCH + 1}, "n", "max_batch"),
    ({"prompt": "a", "temperature": -0.5}, "temperature", ">= 0"),
    ({"prompt": "a", "top_k": -1}, "top_k", ">= 0"),
    ({"prompt": "a", "max_tokens": "ten"}, "max_tokens", "integer"),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"prompt": "a", "logprobs": 2}, "logprobs", "not supported"),
    ({"prompt": "h\u00e9llo \u2603"}, "prompt", "'\u00e9', '\u2603'"),  # unknown characters are named
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": [1, 2]}, "prompt", "list of strings"),
    ({"prompt": "a", "model": "nope"}, "model", "unknown model 'nope'"),
]


@pytest.mark.parametrize("fields,param,message", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests_are_400_with_an_openai_error(client, server, fields, param, message):
    kw = {"model": NAME} | fields
    model, prompt = kw.pop("model"), kw.pop("prompt")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=model, prompt=prompt, extra_body=kw)
    error = e.value.body
    assert e.value.status_code == 400 and error["type"] == "invalid_request_error" and error["param"] == param
    assert message in error["message"]
    assert healthy(server)


def test_requests_the_client_would_not_send_are_400_too(server):
    for content in (b'{"model": "tiny"}', b"not json", b"[1, 2]"):
        r = httpx.post(f"{server}/v1/completions", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert "prompt" in httpx.post(f"{server}/v1/completions", json={"model": NAME}).json()["error"]["message"]
    assert httpx.get(f"{server}/v1/nothing").json()["error"]["message"].startswith("GET /v1/nothing")
    assert healthy(server)


def test_concurrent_clients_each_get_their_own_answer(client, server, local):
    """16 clients at once, prompts of two lengths (so some share a batch), each with its own seed:
    every answer is the one the request gets alone."""
    requests = [("ROMEO:" if i % 2 else "JULIET:", i) for i in range(16)]

    def ask(request):
        prompt, seed = request
        return client.completions.create(model=NAME, prompt=prompt, max_tokens=24, seed=seed).choices[0].text

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, requests))
    assert answers == [expected(local, prompt, 24, seed=seed)[0] for prompt, seed in requests]
    assert healthy(server)


def wait_until_idle(url: str) -> dict:
    deadline = time.monotonic() + 60
    while (health := httpx.get(f"{url}/health").json())["rows_in_flight"] > 0:
        assert time.monotonic() < deadline, "rows are still decoded"
        time.sleep(0.1)
    return health


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_frees_its_place(client, server, stream):
    before = wait_until_idle(server)
    body = {"model": NAME, "prompt": "ROMEO:", "max_tokens": 2000, "n": MAX_BATCH, "stream": stream}
    if stream:
        with httpx.stream("POST", f"{server}/v1/completions", json=body) as r:
            next(r.iter_lines())  # the first piece came: the rows are decoding; then the client hangs up
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server}/v1/completions", json=body, timeout=1.0)
    after = wait_until_idle(server)
    assert after["forward_passes"] - before["forward_passes"] < 2000  # it left before its tokens were drawn
    out = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=5, n=MAX_BATCH)  # the whole batch is free
    assert len(out.choices) == MAX_BATCH


def test_a_failing_model_fails_its_requests_not_the_decoding_thread(local):
    model, _ = local
    events: queue.Queue[str] = queue.Queue()
    batcher = Batcher(model, max_batch=4)

    def job() -> Job:
        return Job(
            [1, 2, 3], n=2, max_tokens=5, temperature=1.0, top_k=0, top_p=1.0, seed=0, emit=lambda k, _: events.put(k)
        )

    try:
        with mock.patch.object(model, "forward", side_effect=RuntimeError("out of memory, say")):
            batcher.submit(job())
            assert events.get(timeout=60) == "error"
        batcher.submit(job())
        assert [events.get(timeout=60) for _ in range(6)] == ["tokens"] * 5 + ["end"]
        assert batcher.alive()
    finally:
        batcher.close()


def test_jobs_that_arrive_together_share_forward_passes(local):
    model, _ = local
    ended: queue.Queue[str] = queue.Queue()
    batcher = Batcher(model, max_batch=8, max_batches=2)
    try:
        for seed in range(24):
            batcher.submit(
                Job([1, 2, 3], 1, 10, 1.0, 0, 1.0, seed, emit=lambda kind, _: kind == "end" and ended.put(kind))
            )
        for _ in range(24):
            ended.get(timeout=60)
    finally:
        batcher.close()
    assert batcher.rows_decoded == 24 * 10
    assert batcher.forward_passes <= 24 * 10 / 4  # 8 rows a pass but for the very first job or so; 1 if unbatched


def test_with_one_batch_at_a_time_a_request_of_another_length_waits_for_the_batch(local):
    model, _ = local
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    batcher = Batcher(model, max_batch=4, max_batches=1)

    def job(name: str, prompt: list[int]) -> Job:
        return Job(prompt, 1, 20, 1.0, 0, 1.0, 0, emit=lambda kind, _: events.put((name, kind)))

    try:
        batcher.submit(job("a", [1, 2, 3]))
        batcher.submit(job("b", [1, 2]))  # another length: it cannot share a forward pass with "a"
        order = [events.get(timeout=60) for _ in range(42)]
    finally:
        batcher.close()
    assert order == [("a", "tokens")] * 20 + [("a", "end")] + [("b", "tokens")] * 20 + [("b", "end")]


def test_a_bad_model_folder_or_option_is_a_user_error(tmp_path, export):
    with pytest.raises(UserError, match="no checkpoint"):
        serve_main(["--out_dir", str(tmp_path)])
    with pytest.raises(UserError, match="'--max_batch' must be >= 1"):
        serve_main(["--out_dir", str(export), "--max_batch", "0"])
