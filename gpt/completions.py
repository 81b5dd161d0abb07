"""The OpenAI completions protocol, without the web server: a request's options checked one by one,
and the text of one choice as its tokens arrive (stop strings, unfinished characters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gpt.generate import complete_prefix
from gpt.tokenizer import Tokenizer

MAX_STOPS = 4  # as OpenAI's API
UNSUPPORTED = {  # request fields this server does not implement -> the values that mean "not used"
    "echo": (None, False),
    "logprobs": (None,),
    "suffix": (None,),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
}


class RequestError(Exception):
    """A bad request: HTTP 400 with an OpenAI-style error body naming the parameter."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


# ----------------------------------------------------------------------------------------------
# The request


@dataclass
class CompletionRequest:
    prompts: list[str]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    n: int
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool


def _number(body: dict, name: str, default: Any, integer: bool) -> Any:
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}, got {value!r}", name)
    return value


def _in_range(name: str, value: float, ok: bool, wanted: str) -> None:
    if not ok:
        raise RequestError(f"'{name}' must be {wanted}, got {value!r}", name)


def _strings(body: dict, name: str, required: bool) -> list[str]:
    value = body.get(name)
    if value is None:
        if required:
            raise RequestError(f"'{name}' is required: a string or a list of strings", name)
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RequestError(f"'{name}' must be a string or a non-empty list of strings", name)
    return value


def parse_request(body: Any, model_name: str, max_batch: int, max_tokens_limit: int) -> CompletionRequest:
    """The options of a completions request, or a RequestError naming the first bad one."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise RequestError(f"unknown model {model!r}; this server serves {model_name!r}", "model", "model_not_found")
    for name, unused in UNSUPPORTED.items():
        if name in body and body[name] not in unused:
            raise RequestError(f"'{name}' is not supported by this server; leave it out", name)
    prompts = _strings(body, "prompt", required=True)
    max_tokens = _number(body, "max_tokens", 16, integer=True)
    _in_range("max_tokens", max_tokens, 0 <= max_tokens <= max_tokens_limit, f"between 0 and {max_tokens_limit}")
    temperature = _number(body, "temperature", 1.0, integer=False)
    _in_range("temperature", temperature, temperature >= 0, ">= 0 (0 is greedy)")
    top_p = _number(body, "top_p", 1.0, integer=False)
    _in_range("top_p", top_p, 0 < top_p <= 1, "in (0, 1]")
    top_k = _number(body, "top_k", 0, integer=True)
    _in_range("top_k", top_k, top_k >= 0, ">= 0 (0 disables it)")
    n = _number(body, "n", 1, integer=True)
    _in_range("n", n, 1 <= n <= max_batch, f"between 1 and {max_batch} (the server's --max_batch)")
    best_of = _number(body, "best_of", n, integer=True)
    _in_range("best_of", best_of, best_of == n, "left out or equal to n (it is not supported otherwise)")
    seed = _number(body, "seed", None, integer=True)
    if seed is not None:
        _in_range("seed", seed, -(2**63) <= seed < 2**64, "a 64-bit integer")
    stop = _strings(body, "stop", required=False)
    _in_range("stop", stop, len(stop) <= MAX_STOPS and all(stop), f"at most {MAX_STOPS} non-empty strings")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError(f"'stream' must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise RequestError("'stream_options' must be an object like {\"include_usage\": true}", "stream_options")
    include_usage = stream and options.get("include_usage", False)
    return CompletionRequest(prompts, max_tokens, temperature, top_p, top_k, n, stop, seed, stream, include_usage)


# ----------------------------------------------------------------------------------------------
# The text of one choice, as its tokens arrive


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that may be the start of a stop string."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), default=0)


class ChoiceText:
    """The text of one sample, cut at end-of-text or before the first stop string.

    ``add`` returns the text a new token makes final. Held back until later tokens decide: the end
    of an unfinished UTF-8 character and an end that may be the start of a stop string. So the
    pieces of a stream join to the text of the same request not streamed.
    """

    def __init__(self, tokenizer: Tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.text = ""  # final so far
        self.tokens = 0  # tokens drawn for this sample (usage)
        self.finish_reason: str | None = None

    def add(self, token: int) -> str:
        if self.finish_reason is not None:
            return ""
        self.tokens += 1
        if token == self.tokenizer.eot_id:
            return self._finish("stop", self.tokenizer.decode(self.ids))
        self.ids.append(token)
        full = self.tokenizer.decode(self.ids)
        found = [i for i in (full.find(s) for s in self.stops) if i >= 0]
        if found:
            return self._finish("stop", full[: min(found)])
        final = complete_prefix(full)
        return self._extend(final[: len(final) - held_back(final, self.stops)])

    def end(self) -> str:
        """No more tokens come (max_tokens reached): everything held back is final."""
        if self.finish_reason is not None:
            return ""
        return self._finish("length", self.tokenizer.decode(self.ids))

    def _finish(self, reason: str, text: str) -> str:
        self.finish_reason = reason
        return self._extend(text)

    def _extend(self, text: str) -> str:
        new, self.text = text[len(self.text) :], text
        return new
