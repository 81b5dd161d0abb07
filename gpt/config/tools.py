"""The options of the commands that use a trained model: sample.py, gpt.serve, gpt.evaluate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpt.config.fields import NON_EMPTY, NON_NEGATIVE, POSITIVE, SEED, doc


@dataclass
class SampleConfig:
    """Text generation from a trained model (sample.py)."""

    out_dir: str = doc(
        "out/default",
        "Run directory to sample from (its newest checkpoint), or a checkpoint or model folder.",
        check=NON_EMPTY,
    )
    start: str = doc(
        "",
        "Prompt text, or FILE:path to read it from a file; empty: a newline (or, for a vocabulary without one, "
        "end-of-text or its first token).",
    )
    num_samples: int = doc(3, "Number of samples, generated together as one batch.", check=POSITIVE)
    max_new_tokens: int = doc(
        500,
        "Tokens to generate per sample; a sample of a BPE model stops earlier at end-of-text.",
        check=NON_NEGATIVE,
    )
    temperature: float = doc(0.8, "Softmax temperature; 0 picks the most likely token (greedy).", check=NON_NEGATIVE)
    top_k: int = doc(0, "Sample only from the k most likely tokens; 0 disables.", check=NON_NEGATIVE)
    top_p: float = doc(
        1.0, "Nucleus sampling: the smallest set of tokens whose probability reaches p; 1 disables.", check="(0, 1]"
    )
    seed: int = doc(1337, "Random seed; the same seed gives the same samples.", check=SEED)
    context_mode: Literal["auto", "exact", "fast", "rolling"] = doc(
        "auto",
        "Past the context length: 'exact' re-fills the key/value cache from the last block_size tokens at "
        "every step (the same tokens as decoding without a cache, one full forward pass per token); 'fast' "
        "drops the oldest half of the window and re-fills once per half window (much faster, but the model "
        "then sees between block_size/2 + 1 and block_size tokens, so samples differ from 'exact' past the "
        "context length); 'rolling' (rotary models only) keeps every cached key and value and lets each new "
        "token replace the oldest, one cheap step per token: every layer attends to the last block_size "
        "tokens with their true distances (for one layer the same as 'exact'; deeper, the cached states "
        "also carry older context). 'auto': 'rolling' for rotary models, else 'exact'.",
    )
    device: str = doc("auto", "'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "auto",
        "Weights and activations dtype; 'auto' is bfloat16 on a GPU with native bf16 (Ampere or newer), "
        "float16 on an older GPU, float32 on CPU.",
    )


@dataclass
class ServeConfig:
    """An OpenAI-compatible completions server (python -m gpt.serve)."""

    out_dir: str = doc(
        "out/default", "Model to serve: a run directory (its newest checkpoint), a checkpoint or a model folder."
    )
    host: str = doc(
        "127.0.0.1",
        "Address to listen on. Loopback (the default) is reachable from this machine only; anything else "
        "(0.0.0.0, a LAN address) lets other machines use the model, and the server has no authentication.",
    )
    port: int = doc(8000, "TCP port to listen on.")
    model_name: str = doc(
        "",
        "Name the API serves the model under (GET /v1/models, a request's 'model'); empty: the out_dir folder's name.",
    )
    max_batch: int = doc(
        16,
        "Most sequences decoded at a time, over all requests (a request with n samples counts n); also the "
        "largest n a request may ask for. More requests wait in arrival order.",
        check=">= 1",
    )
    max_batches: int = doc(
        2,
        "Most batches decoded in turns (each holds requests whose prompts have one length in tokens). A "
        "request that cannot start a batch waits for one to end, then starts with the others that waited: "
        "1 gives the largest batches (throughput), more let new requests start sooner (latency).",
        check=">= 1",
    )
    max_tokens: int = doc(2048, "Largest max_tokens a request may ask for.", check=">= 1")
    context_mode: Literal["auto", "exact", "fast", "rolling"] = doc(
        "auto",
        "Past the context length, as sample.py's --context_mode: 'auto' is 'rolling' for rotary models, else 'exact'.",
    )
    device: str = doc("auto", "'auto' (CUDA if available, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = doc(
        "auto", "Weights and activations dtype; 'auto' is bfloat16 on a GPU that supports it, else float32."
    )
    cpu_threads: int = doc(
        0,
        "Threads for the model on CPU; 0: torch's default (one per core). Fewer is faster for small models on "
        "a machine that is busy with other work.",
    )


@dataclass
class EvalConfig:
    """A full evaluation pass over one split (python -m gpt.evaluate)."""

    out_dir: str = doc(
        "out/default",
        "Model to evaluate: a run directory (its newest checkpoint), a checkpoint or a model folder.",
        check=NON_EMPTY,
    )
    data: str = doc(
        "",
        "Dataset folder holding <split>.tok (or <split>-*.tok shards); empty: the dataset the run was trained "
        "on, as named in its checkpoint (data.root/data.dataset, relative to the current directory). With "
        "--task: the task's local jsonl.",
    )
    split: str = doc(
        "val", "Split to evaluate: 'val', 'train', or any <split> with token files in the folder.", check=NON_EMPTY
    )
    batch_size: int = doc(8, "Windows of block_size tokens per forward pass, per process.", check=POSITIVE)
    mixed_precision: Literal["no", "bf16", "fp16"] = doc(
        "no", "Autocast precision through accelerate: 'no', 'bf16' (CPU and GPU) or 'fp16' (GPU only)."
    )
    json: str = doc(
        "",
        "Where to write the results as JSON; empty: eval-<split>.json (hellaswag.json, lm_eval.json) in the run "
        "directory (in the model folder when it is not part of a run).",
    )
    task: str = doc(
        "",
        "Score a benchmark instead of the loss pass: 'hellaswag' (acc and acc_norm over the validation items; "
        "--data FILE.jsonl for a local copy in the release format, else the hub's Rowan/hellaswag).",
    )
    limit: int = doc(0, "With --task or --lm_eval: score only the first N items of each task; 0: every item.")
    lm_eval: str = doc(
        "",
        "Run lm-evaluation-harness tasks on the model (comma-separated names, e.g. hellaswag,lambada_openai; "
        "needs the eval extra) and print and save lm_eval's results.",
    )
    include_path: str = doc("", "With --lm_eval: a folder of extra task YAML files for lm_eval to find.")
