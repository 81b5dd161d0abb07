"""Decoding: cached against uncached, greedy against top-k=1, the nucleus, seeds, past the context."""

import os
import pty
import subprocess
import sys

import pytest
import torch

from gpt.config import ModelConfig
from gpt.errors import UserError
from gpt.generate import BatchDecoder, Sampling, filter_logits, generate_text, generate_tokens, pick_dtype, sample_ids
from gpt.kv_cache import KVCache
from gpt.model import GPT
from gpt.tokenizer import CharTokenizer, GPT2Tokenizer

from conftest import ROOT, env, random_export, randomise, run_script, tiny, uncached_greedy

BLOCK = 16
VOCAB = 20


def sharp_model(seed: int = 0, dtype: torch.dtype = torch.float32, **features) -> GPT:
    """A random GPT whose weights are large enough that its greedy choice depends on the context
    (with the training init, 0.02, every context gives almost the same flat distribution)."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=VOCAB, **features)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model.to(dtype)


def prompt(length: int, batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def run(model, idx, n, **kw) -> torch.Tensor:
    return torch.stack(list(generate_tokens(model, idx, n, **kw)), dim=1)  # (B, n)


@pytest.mark.parametrize("prompt_len", [1, 5, 15, 16, 40])
def test_greedy_cached_equals_uncached_inside_and_past_the_context(prompt_len):
    model = sharp_model()
    idx = prompt(prompt_len)
    n = 3 * BLOCK  # always runs past the context
    cached = run(model, idx, n, temperature=0)
    assert torch.equal(cached, run(model, idx, n, temperature=0, use_cache=False))
    assert torch.equal(cached, uncached_greedy(model, idx, n))
    assert len(cached.unique()) > 5  # the model's choices depend on the context, so the check has teeth


@pytest.mark.parametrize(
    "features",
    [{"unet_skips": True}, {"value_embeds": 1}, {"logit_softcap": 2.0}, {"unet_skips": True, "value_embeds": 1}],
    ids=["unet_skips", "value_embeds", "logit_softcap", "skips_and_value_embeds"],
)
def test_greedy_cached_equals_uncached_with_the_speedrun_switches(features):
    model = sharp_model(**features)
    idx = prompt(5)
    n = 3 * BLOCK  # runs past the context
    cached = run(model, idx, n, temperature=0)
    assert torch.equal(cached, run(model, idx, n, temperature=0, use_cache=False))
    assert torch.equal(cached, uncached_greedy(model, idx, n))
    assert len(cached.unique()) > 5


@pytest.mark.parametrize("use_cache", [True, False])
def test_only_the_sampled_position_gets_logits(use_cache):
    """The prefill and every step compute the head for the last position only, not (B, T, V)."""
    model = sharp_model()
    shapes = []
    model.register_forward_hook(lambda module, args, out: shapes.append(tuple(out[0].shape)))
    run(model, prompt(12), BLOCK, temperature=0, use_cache=use_cache)  # prefill of 12, then past the context
    assert len(shapes) == BLOCK and set(shapes) == {(3, 1, VOCAB)}  # the prefill, then one per new token
    idx = prompt(12)
    torch.testing.assert_close(model(idx, last_only=True)[0], model(idx)[0][:, -1:])


def test_same_seed_same_samples_with_and_without_the_cache():
    model = sharp_model()
    idx = prompt(4)

    def sampled(seed, **kw):
        return run(model, idx, 2 * BLOCK, temperature=1.0, top_k=8, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(sampled(7), sampled(7, use_cache=False))
    assert torch.equal(sampled(7), sampled(7))
    assert not torch.equal(sampled(7), sampled(8))


def test_a_group_in_a_batch_draws_the_tokens_it_draws_alone_and_may_leave_early():
    """BatchDecoder: each group of rows has its own options and generator, so its tokens do not depend on
    its batch mates (past the context too), and the others go on unchanged when a group leaves."""
    model = sharp_model()
    idx = prompt(5, batch=6)
    n, leave_at = 2 * BLOCK, 10
    groups = [(range(0, 1), 1, 1.0, 0), (range(1, 4), 2, 0.7, 5), (range(4, 6), 3, 0.0, 0)]  # rows, seed, temp, top_k

    def generator(seed):
        return torch.Generator().manual_seed(seed)

    alone = [run(model, idx[rows], n, temperature=t, top_k=k, generator=generator(s)) for rows, s, t, k in groups]
    decoder = BatchDecoder(model, idx, [(len(rows), Sampling(t, k, 1.0, generator(s))) for rows, s, t, k in groups])
    before = torch.stack([decoder.step() for _ in range(leave_at)], dim=1)  # (6, leave_at)
    decoder.keep([1, 2])  # the first group leaves
    after = torch.stack([decoder.step() for _ in range(n - leave_at)], dim=1)  # (5, n - leave_at)
    assert torch.equal(before[0], alone[0][0, :leave_at])
    assert torch.equal(torch.cat([before[1:], after], dim=1), torch.cat(alone[1:]))
    assert not torch.equal(alone[1][0], alone[1][1])  # sampled rows differ: the check has teeth


def test_top_k_of_one_is_greedy():
    model = sharp_model()
    idx = prompt(3)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(
        run(model, idx, 2 * BLOCK, temperature=1.5, top_k=1, generator=g), run(model, idx, 2 * BLOCK, temperature=0)
    )


def test_top_p_keeps_the_smallest_set_whose_mass_reaches_p():
    probs = torch.tensor([0.10, 0.50, 0.05, 0.20, 0.15])  # ranked: 0.50 (1), 0.20 (3), 0.15 (4), 0.10 (0), 0.05 (2)
    logits = probs.log()[None].repeat(2, 1)
    logits[1] = logits[1].flip(0)  # a second row in another order
    for p, kept in [
        (0.3, {1}),
        (0.5, {1}),
        (0.65, {1, 3}),
        (0.75, {1, 3, 4}),
        (0.9, {0, 1, 3, 4}),
        (0.99, {0, 1, 2, 3, 4}),
    ]:
        filtered = filter_logits(logits, top_p=p)
        assert {i for i in range(5) if filtered[0, i] > float("-inf")} == kept, p
        assert {4 - i for i in range(5) if filtered[1, i] > float("-inf")} == kept, p
        assert torch.equal(filtered[0][list(kept)], logits[0][list(kept)])  # kept logits are unchanged


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5]])
    assert (filter_logits(logits, top_k=2) > float("-inf")).tolist() == [[False, True, False, True, False]]


def test_sampling_with_top_p_draws_only_from_the_nucleus():
    model = sharp_model()
    idx = prompt(5, batch=64)
    g = torch.Generator().manual_seed(0)
    logits, _ = model(idx)
    allowed = filter_logits(logits[:, -1].float(), top_p=0.6) > float("-inf")  # (64, V)
    token = next(generate_tokens(model, idx, 1, temperature=1.0, top_p=0.6, generator=g))
    assert allowed[torch.arange(64), token].all()
    assert (allowed.sum(-1) < VOCAB).all()  # the nucleus really is smaller than the vocabulary


class ForwardLog:
    """Records, for every forward pass, (positions already cached, new positions)."""

    def __init__(self, model):
        self.calls: list[tuple[int, int]] = []
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        cache = kwargs.get("cache")
        self.calls.append((cache.pos if cache is not None else 0, args[0].size(1)))


def test_fast_mode_refills_once_per_half_window_and_stays_in_the_context():
    model = sharp_model()
    log = ForwardLog(model)
    idx = prompt(4)
    n = 4 * BLOCK
    fast = run(model, idx, n, temperature=0, context_mode="fast")
    assert all(cached + new <= BLOCK for cached, new in log.calls)
    # calls[i] is the forward pass after the i-th new token; the window overflows first at token 13
    refill_at = [i for i, (cached, new) in enumerate(log.calls) if i > 0 and new > 1]
    assert refill_at[0] == BLOCK - idx.size(1) + 1
    assert all(b - a == BLOCK // 2 for a, b in zip(refill_at, refill_at[1:], strict=False))  # once per half window
    assert len(log.calls) == n and refill_at[-1] + BLOCK // 2 >= n  # no pass after the last token; none missed
    assert all(log.calls[i] == (0, BLOCK // 2 + 1) for i in refill_at)  # the newest half + the new token

    exact = run(model, idx, n, temperature=0)
    inside = BLOCK - idx.size(1) + 1  # tokens decided with the window not yet full
    assert torch.equal(fast[:, :inside], exact[:, :inside])
    assert not torch.equal(fast, exact)  # past the context the two modes see different windows
    assert torch.equal(fast, run(model, idx, n, temperature=0, context_mode="fast", use_cache=False))


def test_exact_mode_refills_the_whole_window_every_step_past_the_context():
    model = sharp_model()
    log = ForwardLog(model)
    run(model, prompt(BLOCK), 5, temperature=0)
    assert log.calls == [(0, BLOCK)] * 5  # the prompt, then one per new token but the last


def test_half_precision_decodes_with_a_half_precision_cache():
    model = sharp_model(dtype=torch.bfloat16)
    cache = model.new_cache()
    model(prompt(3), cache=cache)
    assert cache.keys[0].dtype == torch.bfloat16
    out = run(model, prompt(3), 2 * BLOCK, temperature=0.8, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 2 * BLOCK) and out.min() >= 0 and out.max() < VOCAB


class ScriptedModel(torch.nn.Module):
    """Row i emits script[i][t] as its t-th new token, whatever the context (for testing stops)."""

    def __init__(self, script: list[list[int]], vocab_size: int, block_size: int = 64):
        super().__init__()
        self.cfg = ModelConfig(kind="bigram", block_size=block_size, vocab_size=vocab_size)
        self.script = torch.tensor(script)
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.prompt_len = None

    def new_cache(self, rolling: bool = False) -> KVCache:
        return KVCache(0, self.cfg.block_size, rolling)

    def forward(self, idx, targets=None, cache=None, last_only=False):
        B, T = idx.shape
        seen = cache.pos + T if cache is not None else T
        cache is not None and cache.advance(T)
        self.prompt_len = self.prompt_len or T
        step = min(seen - self.prompt_len, self.script.size(1) - 1)
        logits = torch.full((B, T, self.cfg.vocab_size), -10.0)
        logits[torch.arange(B), -1, self.script[:, step]] = 10.0
        return logits[:, -1:] if last_only else logits, None


def test_each_sample_stops_at_end_of_text():
    tok = GPT2Tokenizer()
    hello, world, comma = tok.encode("Hello")[0], tok.encode(" world")[0], tok.encode(",")[0]
    eot = tok.eot_id
    model = ScriptedModel([[hello, comma, eot, world, world], [world, world, world, eot, hello]], tok.vocab_size)
    texts = generate_text(model, tok, "Say:", max_new_tokens=50, num_samples=2, temperature=0)
    assert texts[0] == "Say:" + tok.decode([hello, comma])
    assert texts[1] == "Say:" + tok.decode([world, world, world])

    model.prompt_len = None
    steps = list(sample_ids(model, tok.encode("Say:"), 50, num_samples=2, temperature=0, eot_id=eot))
    assert len(steps) == 4  # generation ends once the last sample has ended, not after 50 tokens


def test_bad_options_are_one_clear_error():
    model = sharp_model()
    bad = [({"top_p": 0.0}, "top_p"), ({"temperature": -1.0}, "temperature"),
           ({"context_mode": "sliding"}, "context_mode"), ({"num_samples": 0}, "num_samples")]  # fmt: skip
    for kw, message in bad:
        with pytest.raises(UserError, match=message):
            next(sample_ids(model, [1, 2], 5, **kw))


@pytest.fixture(scope="module")
def export(tmp_path_factory, shakespeare):
    """A random GPT (sharp weights, char vocabulary of Tiny Shakespeare) as a portable export."""
    folder = tmp_path_factory.mktemp("export")
    return random_export(folder / "model", CharTokenizer.from_text(shakespeare), BLOCK, sharp=True)


def test_sample_script_streams_on_a_terminal_the_text_it_prints_otherwise(export):
    args = ["--out_dir", str(export), "--start", "ROMEO:", "--num_samples", "2", "--max_new_tokens", "40",
            "--context_mode", "fast", "--seed", "3"]  # fmt: skip
    piped = run_script("sample.py", *args)
    assert piped.returncode == 0, piped.stderr

    controller, terminal = pty.openpty()  # sample.py's stdout is a terminal here
    proc = subprocess.Popen([sys.executable, str(ROOT / "sample.py"), *args], stdout=terminal, env=env())
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=60) == 0
    os.close(controller)
    shown = b"".join(chunks).decode().replace("\r\n", "\n")
    assert shown == piped.stdout
    assert (
        piped.stdout.startswith("--- sample 1 of 2 ---\nROMEO:") and "\n--- sample 2 of 2 ---\nROMEO:" in piped.stdout
    )


def test_sample_script_refuses_bad_options_before_loading(tmp_path):
    r = run_script("sample.py", "--out_dir", str(tmp_path / "nothing"), "--top_p", "1.5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "'--top_p' must be in (0, 1]" in r.stderr


class FakeGPUs:
    """torch.cuda as seen on a machine with an A100 as cuda:0 and a V100 as cuda:1: the V100 has no
    bf16 tensor cores, but torch reports bf16 as supported there by emulation unless told not to."""

    def __init__(self, monkeypatch):
        self.current = 0
        native = {0: True, 1: False}
        fake = self

        class device:  # torch.cuda.device: selects a device for the duration of a block
            def __init__(self, d):
                self.index = torch.device(d).index

            def __enter__(self):
                self.previous = fake.current
                fake.current = self.index if self.index is not None else fake.current

            def __exit__(self, *exc):
                fake.current = self.previous

        def is_bf16_supported(including_emulation: bool = True) -> bool:  # of the current device
            return native[fake.current] or including_emulation

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device", device)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


@pytest.mark.parametrize("current", [0, 1])
def test_auto_dtype_is_bf16_only_on_gpus_with_native_bf16_and_asks_the_chosen_gpu(monkeypatch, current):
    gpus = FakeGPUs(monkeypatch)
    gpus.current = current
    assert pick_dtype("auto", "cuda:0") == torch.bfloat16
    assert pick_dtype("auto", "cuda:1") == torch.float16  # emulated bf16 is slow: fp16 instead
    assert pick_dtype("auto", "cuda") == (torch.bfloat16 if current == 0 else torch.float16)
    assert gpus.current == current  # the selection is restored
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("bfloat16", "cuda:1") == torch.bfloat16  # asked for explicitly


def greedy(model: GPT, prompt: torch.Tensor, n: int, **kw) -> torch.Tensor:
    return torch.stack(list(generate_tokens(model, prompt, n, temperature=0.0, **kw)), dim=1)  # (B, n)


def test_rolling_cache_is_exact_for_one_rotary_layer():
    # One layer: a cached key depends on its own token only, and rotary scores on distances only, so
    # the rolling cache gives what re-encoding the cropped window at every step gives.
    torch.manual_seed(0)
    model = randomise(GPT(tiny(position="rope", n_layer=1))).eval()
    prompt = torch.randint(0, 65, (3, 5))
    n = 40  # far past block_size 16
    rolling = greedy(model, prompt, n, context_mode="rolling")
    exact = greedy(model, prompt, n, context_mode="exact", use_cache=False)
    assert torch.equal(rolling, exact)


def test_rolling_cache_decodes_past_the_context_in_cached_steps():
    torch.manual_seed(0)
    model = randomise(GPT(tiny(position="rope", n_layer=2))).eval()
    prompt = torch.randint(0, 65, (2, 20))  # longer than the context: cropped to the last 16
    within = greedy(model, prompt[:, -10:], 6, context_mode="rolling")  # inside the context: as exact
    assert torch.equal(within, greedy(model, prompt[:, -10:], 6, context_mode="exact"))
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(args[0].size(1)), with_kwargs=True)
    tokens = greedy(model, prompt, 30)  # 'auto' is rolling for a rotary model
    assert tokens.shape == (2, 30) and tokens.max() < 65
    assert calls == [16] + [1] * 29  # the prompt once, then one position per step: the cache is never re-filled
    with pytest.raises(UserError, match="needs a model with rotary positions"):
        greedy(GPT(tiny()).eval(), prompt, 3, context_mode="rolling")
