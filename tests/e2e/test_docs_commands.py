"""Every launch command the documentation shows must start and fit: each is extracted from README.md,
docs/*.md, launch/README.md, the comments of launch/*.yaml and configs/*.yaml and the header of
launch/slurm.sbatch, its world size derived (processes, or nodes x GPUs per node), and it is planned
with gpt.plan as train.py would split it; a command on GPUs must also fit the GPU its text names."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from accelerate.commands.launch import launch_command_parser

from gpt import plan
from gpt.config import load_config

from conftest import ROOT, TINY, accelerate_launch, free_port

PROGRAMS = r"(?:accelerate launch|torchrun|sbatch|bash launch/slurm\.sbatch|python train\.py)"
GPU_NAMES = {r"A100": "a100-40gb", r"H100": "h100-80gb", r"H200": "h200-141gb", r"\bL4\b": "l4-24gb",
             r"4090": "rtx4090-24gb"}  # fmt: skip
DEFAULT_GPU = "a100-40gb"  # a command that names no GPU must fit the smallest common data-centre GPU
SBATCH_DEFAULTS = dict(re.findall(r"#SBATCH --([\w-]+)=(\S+)", (ROOT / "launch/slurm.sbatch").read_text()))


@dataclass
class Launch:
    text: str  # the command and its trailing comment, as documented
    where: str
    world: int = 1
    train_args: list[str] = field(default_factory=list)
    cpu: bool = False
    fsdp: bool = False
    accelerate_defaults_warning: bool = False
    gpu: str = DEFAULT_GPU


def documented_lines() -> list[tuple[str, str]]:
    """(line, file) for every line of documentation that holds a launch command."""
    found = []
    pages = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md"))]
    for name in ("README.md", "launch/README.md", *pages):
        text = (ROOT / name).read_text()
        for block in re.findall(r"```(?:bash)?\n(.*?)```", text, re.S):
            found += [(line, name) for line in block.replace("\\\n", " ").splitlines()]
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        found += [(" ".join(span.split()), name) for span in re.findall(r"`([^`]+)`", prose)]
    comment_files = [*sorted((ROOT / "launch").glob("*.yaml")), *sorted((ROOT / "configs").glob("*.yaml"))]
    for path in [*comment_files, ROOT / "launch/slurm.sbatch"]:
        for line in path.read_text().splitlines():
            if line.startswith("#") and not line.startswith("#SBATCH"):
                found.append((line.lstrip("# "), str(path.relative_to(ROOT))))
    # from the program on, up to a closing backtick or the next command of a shell line (&&, ;, |)
    commands = [(re.split(r"`| && |; | \| ", line[m.start() :])[0], where)
                for line, where in found if (m := re.search(PROGRAMS, line))]  # fmt: skip
    return [(c, where) for c, where in commands if re.search(r"train\.py|-m gpt\.|slurm\.sbatch", c.split(" #")[0])]


def script_args(tokens: list[str]) -> list[str]:
    """train.py's arguments: placeholders (PRESET, ..., $VAR) and the bench's --options dropped."""
    args, skip = [], False
    for token in tokens:
        if skip:
            skip = False
        elif token.startswith("--"):
            skip = "=" not in token
        elif not ("$" in token or "..." in token or re.fullmatch(r"[A-Z_]+", token)):
            args.append(token)
    return [a for a in args if not re.fullmatch(r"\d+", a)]


def parse(line: str, where: str) -> Launch | None:
    """The launch a documented line makes, or None for commands that do not train (--help, evaluation)."""
    command = line.split(" # ")[0].split("  #")[0]
    tokens = shlex.split(command)
    if "--help" in tokens or "gpt.evaluate" in tokens:
        return None
    launch = Launch(line, where)
    for name, kind in GPU_NAMES.items():
        if re.search(name, line):
            launch.gpu = kind
    if tokens[:2] == ["accelerate", "launch"]:
        # placeholders for a machine's rank or address ($RANK, i, NODE0) do not change the world size
        concrete = re.sub(r"(--machine_rank|--main_process_ip) \S+", r"\1 0", command)
        args = launch_command_parser().parse_args(shlex.split(concrete)[2:])
        file = yaml.safe_load((ROOT / args.config_file).read_text()) if args.config_file else {}
        launch.world = args.num_processes or file.get("num_processes", 1)
        launch.cpu = bool(file.get("use_cpu") or args.cpu)
        launch.fsdp = file.get("distributed_type") == "FSDP" or args.use_fsdp
        flags = (args.num_processes, args.num_machines, args.mixed_precision, args.dynamo_backend)
        launch.accelerate_defaults_warning = not args.config_file and None in flags
        launch.train_args = script_args(args.training_script_args)
    elif tokens[0] == "torchrun":
        options = dict(re.findall(r"--(\w+) (\S+)", command))
        launch.world = int(options.get("nproc_per_node", 1)) * int(options.get("nnodes", 1))
        launch.train_args = script_args(tokens[tokens.index("train.py") + 1 :])
    elif tokens[0] == "sbatch":
        options = SBATCH_DEFAULTS | dict(re.findall(r"--([\w-]+)[ =](\d+)", command))
        launch.world = int(options["nodes"]) * int(options["gpus-per-node"])
        launch.train_args = script_args(tokens[tokens.index("launch/slurm.sbatch") + 1 :])
    elif tokens[0] == "bash":  # the --dry-run of the SLURM script, with the allocation in the environment
        env = dict(re.findall(r"(SLURM_\w+)=(\S+)", where_env(line, where)))
        if not env:
            return None
        launch.world = int(env["SLURM_JOB_NUM_NODES"]) * int(env["SLURM_GPUS_ON_NODE"])
        launch.train_args = script_args(tokens[tokens.index("launch/slurm.sbatch") + 1 :])
    else:  # python train.py
        launch.train_args = script_args(tokens[2:])
    return launch


def where_env(line: str, where: str) -> str:
    """The environment assignments written before a command on its documented line (block lines are joined)."""
    text = (ROOT / where).read_text().replace("\\\n", " ")
    return next((full for full in text.splitlines() if line in full), "")


LAUNCHES = [launch for line, where in documented_lines() if (launch := parse(line, where))]


def test_the_extraction_finds_the_documented_launches():
    texts = [launch.text for launch in LAUNCHES]
    assert len(LAUNCHES) >= 25
    sbatch = [launch for launch in LAUNCHES if "gpt2_124m_fineweb" in launch.text and launch.text.startswith("sbatch")]
    assert sbatch and all(launch.world == 16 for launch in sbatch)  # --nodes 2 x 8 GPUs per node (#SBATCH)
    assert any(launch.world == 32 and launch.text.startswith("sbatch --nodes 4") for launch in LAUNCHES)
    assert any(launch.world == 16 and launch.text.startswith("bash launch/slurm.sbatch") for launch in LAUNCHES)
    assert any("cpu_multiprocess.yaml --num_processes 4" in text for text in texts)
    assert any(launch.fsdp for launch in LAUNCHES) and any(launch.cpu for launch in LAUNCHES)


@pytest.mark.parametrize("launch", LAUNCHES, ids=[f"{launch.where}: {launch.text[:90]}" for launch in LAUNCHES])
def test_every_documented_launch_starts_and_fits(launch):
    cfg = load_config(launch.train_args)  # a bad key or value stops train.py at start-up
    model, _ = plan.planning_model(cfg)
    plan.resolve_micro_batch(cfg.train, model, launch.world, None, "bf16", launch.fsdp)  # the split, as on CPU
    assert not launch.accelerate_defaults_warning, "give --config_file launch/... (accelerate warns of defaults)"
    if not launch.cpu:
        built = plan.make_plan(cfg, model, launch.world, plan.GPU_KINDS[launch.gpu], True, launch.fsdp)
        assert built.fits, f"needs {built.memory.total / plan.GIB:.1f} GiB on a {launch.gpu}"


def test_the_documented_cpu_launch_runs_with_the_defaults_and_no_launcher_warning(data_root, tmp_path):
    # launch/cpu_multiprocess.yaml with the default batch and micro batch (auto): 2 processes, as documented;
    # only the size of the run is made small
    small = [a for a in TINY if not a.startswith("train.micro_batch_size")] + ["train.max_steps=2"]
    r = accelerate_launch(
        "--config_file", "launch/cpu_multiprocess.yaml", "--main_process_port", str(free_port()), "train.py",
        *small, f"data.root={data_root}", "data.dataset=tiny", f"out_dir={tmp_path / 'run'}", cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "global batch 8 = micro batch 4 x 2 processes x 1 accumulation steps" in r.stdout
    assert "micro batch 4 (train.micro_batch_size=auto): all of batch_size 8 / 2 process(es) = 4" in r.stdout
    assert "were not passed to `accelerate launch`" not in r.stderr


def test_shipped_launch_configs_set_what_accelerate_would_otherwise_warn_about():
    for path in sorted((ROOT / "launch").glob("*.yaml")):
        file = yaml.safe_load(path.read_text())
        assert {"num_processes", "num_machines", "mixed_precision", "dynamo_backend"} <= file.keys(), path.name


def test_a_launch_that_does_not_divide_is_caught(tmp_path):
    # the check itself: shakespeare_char's batch of 64 over 3 processes cannot be split
    readme = tmp_path / "x.md"
    readme.write_text("```bash\naccelerate launch --config_file launch/single_node.yaml --num_processes 3 "
                      "train.py shakespeare_char\n```\n")  # fmt: skip
    (launch,) = [parse(line, "x") for line in re.findall(r"```bash\n(.*?)\n```", readme.read_text())]
    assert launch.world == 3
    cfg = load_config(launch.train_args)
    with pytest.raises(Exception, match="cannot be split evenly over 3 processes"):
        plan.resolve_micro_batch(cfg.train, plan.planning_model(cfg)[0], launch.world, None, "bf16", False)


def test_paths_in_launch_commands_exist():
    for launch in LAUNCHES:
        for path in re.findall(r"(launch/[\w.]+)", launch.text):
            assert Path(ROOT / path).exists(), f"{launch.where}: {path}"
