"""Fault-injection campaign: kill -9 and full disks at seeded moments, and damaged run files.

    python tests/helpers/fault_campaign.py kills --seed 0 --moments 32 --timed 6   # kill -9 / ENOSPC, resume
    python tests/helpers/fault_campaign.py damage                        # every kind of damaged file

Each training attempt runs in a child process forked from this one (torch is imported once, here,
and never run here, so forking is safe and an attempt starts in a fraction of a second). Faults come
through the declared hook, ``GPT_FAULT=PHASE@STEP:ACTION`` (``gpt.faults.fault_point``).

``kills`` trains a tiny model with dropout (so a resume that lost the RNG state would show) once
without faults, then again through a chain of attempts, each stopped by SIGKILL or a full disk at a
moment drawn from a seeded generator (after a training step, in each phase of a save, in rotation,
while resuming; and ``--timed`` kills after a random delay, wherever the run then is), and resumed
by the next. It checks after every attempt that the newest checkpoint
verifies, that at most one checkpoint interval was lost, that a full disk was one line, and that
every loss logged so far equals the uninterrupted run's bit for bit; at the end, that the final
weights are byte-identical. ``damage`` damages one file of a finished run at a time and checks that
sample.py or the resumed training answers with one line. Both print a JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# What every attempt would otherwise import again (the optimizer pulls in torch._dynamo, the loss
# plot matplotlib): imported once here, before any fork, and not run.
import matplotlib.figure  # noqa: E402, F401, I001
import torch._dynamo  # noqa: E402, F401

from gpt import checkpoint as ckpt  # noqa: E402
from gpt import trainer  # noqa: E402  (imports torch: once, before any fork)
from gpt.config import load_config  # noqa: E402
from gpt.errors import UserError  # noqa: E402
from gpt.prepare import prepare_text  # noqa: E402
from gpt.resume import newest_verified  # noqa: E402
from gpt.tokenizer import ASSETS  # noqa: E402

INTERVAL, KEEP_LAST, MAX_STEPS = 3, 2, 30
RUN = [
    "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16", "model.dropout=0.1",
    "train.batch_size=4", "train.micro_batch_size=4", f"train.max_steps={MAX_STEPS}", "train.warmup_steps=2",
    "train.log_interval=1", f"train.eval_interval={MAX_STEPS}", "train.eval_windows=4", "train.eval_samples=0",
    "train.final_eval=false", f"train.checkpoint_interval={INTERVAL}", f"train.keep_last={KEEP_LAST}",
    "train.cpu_threads=1", "wandb.mode=disabled",
]  # fmt: skip
NAN_TENSOR = "blocks.0.attn.proj.weight"  # the tensor made NaN by nan_weight
SAVE_PHASES = ["save.begin", "save.state", "save.export", "save.manifest", "save.publish", "save.latest", "save.rotate"]


# ----------------------------------------------------------------------------------------------
# Running an entry point in a forked child


def in_child(
    target, args: list[str], workdir: Path, fault: str = "", kill_after: float | None = None
) -> tuple[int, str]:
    """Run ``target(args)`` as an entry point would (UserError: one line, exit 2) in a forked child,
    SIGKILLed after ``kill_after`` seconds if given; returns its exit code (negative: killed by that
    signal) and its stderr."""
    err = workdir / "stderr.txt"
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.environ["GPT_FAULT"] = fault
            target(args)
            code = 0
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + (kill_after if kill_after is not None else math.inf)
    while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    if ended[0] == 0:
        os.kill(pid, signal.SIGKILL)
        ended = os.waitpid(pid, 0)
    status = ended[1]
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, err.read_text()


def train(args: list[str]) -> None:
    trainer.train(load_config(args))


def sample(args: list[str]) -> None:
    import sample as sample_script

    sample_script.main(args)


def one_clear_line(code: int, stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    return code == 2 and "Traceback" not in stderr and len(lines) == 1


# ----------------------------------------------------------------------------------------------
# Reading a run


def not_json(constant: str):
    raise ValueError(f"metrics.jsonl holds {constant}, which is not JSON")


def logged_losses(out: Path, torn_ok: bool = False) -> dict[int, float]:
    """train/loss by step from metrics.jsonl: strict JSON, each step once, no torn line (but for the
    last one, when a kill at a random time may have cut it: the next start drops it)."""
    path = out / "metrics.jsonl"
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines(keepends=True)
    if torn_ok and lines and not lines[-1].endswith("\n"):
        lines.pop()
    rows = [json.loads(line, parse_constant=not_json) for line in lines]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def final_weights_sha(out: Path) -> str:
    return hashlib.sha256((ckpt.latest_checkpoint(out) / ckpt.EXPORT_DIR / ckpt.WEIGHTS).read_bytes()).hexdigest()


def verified_step(out: Path) -> int:
    folder, problems = newest_verified(out)
    assert not problems, problems  # a fault never damages a published checkpoint
    return 0 if folder is None else int(folder.name.split("-")[1])


# ----------------------------------------------------------------------------------------------
# kills: kill -9 and full disks, then resume


def plan(rng: random.Random, moments: int, timed: int) -> list[tuple[str, str]]:
    """(action, phase) of each moment: a kill and a full disk in every save phase, a kill in each
    resume phase, ``timed`` kills after a random delay (wherever the run then is: starting,
    resuming, mid-step, mid-write), the rest kills after a training step; in a seeded random order."""
    planned = [("kill", p) for p in SAVE_PHASES] + [("enospc", p) for p in SAVE_PHASES]
    planned += [("kill", "resume.verify"), ("kill", "resume.load")]
    planned += [("kill", "train.step")] * max(0, moments - len(planned)) + [("kill", "timed")] * timed
    rng.shuffle(planned)
    return planned


def next_moment(rng: random.Random, planned: list[tuple[str, str]], done: int) -> str:
    """The GPT_FAULT of the first planned moment that can happen in a run whose newest checkpoint is
    at ``done``, with its step drawn at random (resume moments need a checkpoint to resume from)."""
    action, phase = next(m for m in planned if done or not m[1].startswith("resume."))
    planned.remove((action, phase))
    if phase.startswith("resume."):
        return f"{phase}:{action}"
    if phase == "timed":
        return f"timed:{rng.uniform(0.2, 2.0):.2f}s"
    if phase == "train.step":
        return f"{phase}@{rng.randint(done + 1, min(MAX_STEPS, done + 2 * INTERVAL))}:{action}"
    saves = [s for s in range(done + INTERVAL, MAX_STEPS + 1, INTERVAL)][:3]
    if phase == "save.rotate":  # rotation deletes something once keep_last checkpoints exist
        saves = [s for s in saves if s > KEEP_LAST * INTERVAL]
    return f"{phase}@{rng.choice(saves)}:{action}"


def kills(seed: int, moments: int, timed: int, work: Path, data_root: Path) -> dict:
    base = [*RUN, f"data.root={data_root}", "data.dataset=tiny"]
    code, err = in_child(train, [*base, f"out_dir={work / 'reference'}"], work)
    assert code == 0, err
    reference = logged_losses(work / "reference")
    rng = random.Random(seed)
    planned = plan(rng, moments, timed)
    tried, resumed, exact, max_lost, enospc_lines, chains, timed_mid_run = [], 0, 0, 0, 0, 0, 0
    out = None
    while planned:
        if out is None or (out / "checkpoints" / ckpt.step_dir_name(MAX_STEPS)).is_dir():
            chains += 1
            out = work / f"chain-{chains}"
        done = verified_step(out)
        fault = next_moment(rng, planned, done)
        action = fault.rsplit(":", 1)[1]
        step = int(fault.split("@")[1].split(":")[0]) if "@" in fault else 0
        if fault.startswith("timed:"):
            code, err = in_child(train, [*base, f"out_dir={out}"], work, kill_after=float(action[:-1]))
            action = "kill"
        else:
            code, err = in_child(train, [*base, f"out_dir={out}"], work, fault)
        now = verified_step(out)
        losses = logged_losses(out, torn_ok=fault.startswith("timed:"))
        if code == 0:  # the moment lay beyond the run's end: nothing was injected; try it again later
            planned.append(("kill", "timed") if fault.startswith("timed:") else ("kill", "train.step"))
            continue
        tried.append(fault)
        if action == "kill":
            assert code == -signal.SIGKILL, (fault, code, err)
            lost = (step or max([done, *losses])) - now  # timed: the last step logged
            timed_mid_run += fault.startswith("timed:") and max([done, *losses]) > done  # it had trained a step
        else:
            assert one_clear_line(code, err) and "no space left" in err, (fault, err)
            assert now in (step, step - INTERVAL) and not list((out / "checkpoints").glob(".tmp-*")), fault
            enospc_lines += 1
            lost = step - now
        max_lost = max(max_lost, lost)
        assert lost <= INTERVAL, (fault, done, now)
        resumed += bool(done)
        if done and all(reference[s] == loss for s, loss in losses.items()):
            exact += 1  # this attempt resumed, and every loss logged so far is the uninterrupted run's
    code, err = in_child(train, [*base, f"out_dir={out}"], work)  # finish the last chain
    assert code == 0, err
    return {
        "moments": len(tried), "timed_kills": sum(f.startswith("timed:") for f in tried),
        "timed_kills_after_a_step": timed_mid_run, "faults": tried, "chains": chains, "resumes": resumed,
        "attempts_resumed_exact": exact, "max_steps_lost": max_lost, "checkpoint_interval": INTERVAL,
        "enospc_one_line": enospc_lines, "final_losses_equal": logged_losses(out) == reference,
        "final_weights_identical": final_weights_sha(out) == final_weights_sha(work / "reference"),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# damage: one damaged file at a time, read by sample.py or by a resuming training


def flip_byte(path: Path, offset: int = 0, value: int = 0xFF) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = value
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def edit_json(path: Path, change, resign: Path | None) -> None:
    """Change a JSON file of a checkpoint and re-sign the checkpoint ``resign``, so only the content is bad."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    if resign is not None:
        ckpt.write_manifest(resign)


def nan_weight(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = folder / ckpt.WEIGHTS
    state = load_file(str(weights))
    state[NAN_TENSOR].view(-1)[0] = float("nan")
    weights.unlink()  # a new inode: the export's hard link keeps the old bytes
    save_file(state, str(weights), metadata={"format": "pt"})
    ckpt.write_manifest(folder.parent)


def newer_token_file(data_dir: Path) -> None:
    path = next(data_dir.glob("train-*.tok"))
    data = bytearray(path.read_bytes())
    data[8:12] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def damages(step_dir: Path) -> list[tuple[str, str, object, str]]:
    """(what, read by, damage, a fragment the one line must hold)."""
    export, state, manifest = step_dir / ckpt.EXPORT_DIR, step_dir / ckpt.TRAINER_STATE, step_dir / ckpt.MANIFEST

    def set_key(path, *keys, value=None, delete=False):
        def change(data):
            for key in keys[:-1]:
                data = data[key]
            if delete:
                del data[keys[-1]]
            else:
                data[keys[-1]] = value

        return lambda: edit_json(path, change, resign=None if path == manifest else step_dir)

    return [
        ("manifest.json: a byte flipped (not UTF-8)", "train", lambda: flip_byte(manifest, 3), "corrupt manifest.json"),
        ("manifest.json: truncated", "train", lambda: manifest.write_text(manifest.read_text()[:40]), "manifest.json"),
        ("manifest.json: files is a list", "train", set_key(manifest, "files", value=[]), "manifest.json"),
        ("manifest.json: a size mistyped", "sample",
         set_key(manifest, "files", "trainer_state.json", "bytes", value="9"), "manifest.json"),
        ("manifest.json: newer format", "train", set_key(manifest, "format_version", value=99), "format version 99"),
        ("manifest.json: newer format", "sample", set_key(manifest, "format_version", value=99), "upgrade gpt"),
        ("trainer_state.json: no step", "train", set_key(state, "step", delete=True), "'step'"),
        ("trainer_state.json: step is text", "train", set_key(state, "step", value="ten"), "'step'"),
        ("trainer_state.json: no model config", "train", set_key(state, "config", "model", delete=True), "'model'"),
        ("trainer_state.json: a byte flipped", "train", lambda: flip_byte(state, 5), "trainer_state.json"),
        ("optimizer.bin: truncated", "train", lambda: truncate(step_dir / "optimizer.bin"), "optimizer.bin"),
        ("model.safetensors: a byte flipped", "train", lambda: flip_byte(step_dir / ckpt.WEIGHTS, 100),
         "model.safetensors"),
        ("random_states_0.pkl: not a pickle (manifest re-signed)", "train",
         lambda: ((step_dir / "random_states_0.pkl").write_bytes(b"garbage"), ckpt.write_manifest(step_dir)),
         "random_states_0.pkl"),
        ("tokenizer.json: no chars", "sample", set_key(export / "tokenizer.json", "chars", delete=True),
         "tokenizer.json"),
        ("tokenizer.json: chars is a number", "sample", set_key(export / "tokenizer.json", "chars", value=5),
         "tokenizer.json"),
        ("tokenizer.json: a byte flipped", "sample", lambda: flip_byte(export / "tokenizer.json", 2), "tokenizer.json"),
        ("config.json: no model", "sample", set_key(export / "config.json", "model", delete=True), "config.json"),
        ("config.json: model is a list", "sample", set_key(export / "config.json", "model", value=[]), "config.json"),
        ("config.json: n_layer is text", "sample", set_key(export / "config.json", "model", "n_layer", value="two"),
         "n_layer"),
        ("config.json: newer format", "sample", set_key(export / "config.json", "format_version", value=99),
         "format version 99"),
        ("config.json: a byte flipped", "sample", lambda: flip_byte(export / "config.json", 0, 0xC3), "config.json"),
        ("model/model.safetensors: NaN in a tensor", "sample", lambda: nan_weight(export), f"tensor {NAN_TENSOR!r}"),
    ]  # fmt: skip


def damage(work: Path, data_root: Path) -> dict:
    base = [*RUN, "train.max_steps=3", "train.keep_last=1", f"data.root={data_root}", "data.dataset=tiny"]
    code, err = in_child(train, [*base, f"out_dir={work / 'base'}"], work)
    assert code == 0, err
    results = []
    for index in range(len(damages(Path("x")))):
        out = work / f"damaged-{index}"
        shutil.copytree(work / "base", out)
        what, reader, apply, fragment = damages(ckpt.latest_checkpoint(out))[index]
        apply()
        if reader == "train":
            code, err = in_child(train, [*base, "train.max_steps=6", f"out_dir={out}"], work)
        else:
            code, err = in_child(sample, ["--out_dir", str(out), "--max_new_tokens", "4", "--device", "cpu"], work)
        clear = one_clear_line(code, err) and fragment in err
        results.append({"damage": what, "read_by": reader, "one_clear_line": clear, "stderr": err.strip()[-400:]})
    tok_dir = work / "data" / "newer"
    shutil.copytree(data_root / "tiny", tok_dir)
    newer_token_file(tok_dir)
    code, err = in_child(
        train, [*RUN, f"data.root={work / 'data'}", "data.dataset=newer", f"out_dir={work / 'n'}"], work
    )
    clear = one_clear_line(code, err) and "newer gpt" in err
    results.append({"damage": "token file: newer format", "read_by": "train", "one_clear_line": clear,
                    "stderr": err.strip()[-400:]})  # fmt: skip
    return {"bad_inputs": len(results), "one_clear_line": sum(r["one_clear_line"] for r in results), "cases": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["kills", "damage"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--moments", type=int, default=24, help="moments at named points of a step, save or resume")
    parser.add_argument("--timed", type=int, default=6, help="further kills after a random delay")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fault-campaign-"))
    try:
        data_root = work / "data"
        with contextlib.redirect_stdout(sys.stderr):
            prepare_text((ASSETS / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000], data_root / "tiny")
        os.chdir(work)
        if args.part == "kills":
            report = kills(args.seed, args.moments, args.timed, work, data_root)
        else:
            report = damage(work, data_root)
        print(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
