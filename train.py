"""Train a GPT with accelerate.

    python train.py                                             # the CPU-sized default on Tiny Shakespeare
    python train.py shakespeare_char                            # the lecture's GPU model (configs/*.yaml)
    python train.py model.n_layer=6 train.max_steps=5000 out_dir=out/deeper
    accelerate launch --config_file launch/cpu_multiprocess.yaml train.py      # 2 CPU processes
    accelerate launch --config_file launch/single_node.yaml train.py gpt2_124m_fineweb   # 8 GPUs
    python -m gpt.launch --config_file launch/single_node.yaml train.py ...   # as accelerate launch; exit 75 on SIGTERM
    python -m gpt.plan gpt2_124m_fineweb --gpus 8 --gpu a100-40gb   # check a topology first
    python train.py --help                                      # every config key

Checkpoints, the exported model, metrics.jsonl and W&B files go to out_dir; run it again and it
continues from the newest checkpoint there. Then: python sample.py --out_dir OUT_DIR.
"""

from __future__ import annotations

from gpt.config import keys_text, load_config, parse_command
from gpt.errors import run_main
from gpt.signals import catch_stop_signals


def main(argv: list[str]) -> int:
    catch_stop_signals()  # first: a stop signal during start-up exits with code 75 instead of killing
    _, config_args = parse_command(None, argv, "train.py", __doc__, epilog=keys_text())
    cfg = load_config(config_args)
    from gpt.trainer import train  # after the config is known good: a typo fails fast, before torch loads

    result = train(cfg)
    if result.is_main_process:
        m = result.metrics
        if "final/val/loss" in m:  # the full pass over val (train.final_eval)
            val = f"val loss {m['final/val/loss']:.4f}, {m['final/val/bits_per_byte']:.4f} bits per byte"
        else:
            val = f"val loss {m.get('eval/val/loss', float('nan')):.4f}"
        print(f"done: step {result.step}, {val}; sample with: python sample.py --out_dir {cfg.out_dir}")
    return 0


if __name__ == "__main__":
    run_main(main)
