"""The map in docs/architecture.md stays true: it names every module of the package and no module that
is gone; no module grows past about 400 lines; the layering rules it states hold in the imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpt"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """'gpt.model' -> its file, for every module of the package (a package's __init__ as the package)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_map_names_every_module_and_only_those():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(gpt(?:\.[a-z_0-9]+)*)`", text))  # module names are lower case
    missing = sorted(
        set(modules()) - named - {"gpt", "gpt.__main__"} - {m for m in modules() if m.endswith("__main__")}
    )
    gone = sorted(named - set(modules()))
    assert missing == [], f"add these modules to docs/architecture.md: {missing}"
    assert gone == [], f"docs/architecture.md names modules that do not exist: {gone}"


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules along a seam: {long}"


def test_the_model_holds_architecture_only():
    """torchtitan's rule: no devices, ranks, optimizers or launchers in the model's files."""
    for name in ("gpt.model",):
        bad = {m for m in imports(modules()[name]) if m.split(".")[0] in ("accelerate", "wandb", "numpy")}
        bad |= {m for m in imports(modules()[name]) if m.startswith("torch.distributed") or m == "torch.optim"}
        assert bad == set(), f"{name} imports training infrastructure: {bad}"


def test_checkpoint_files_are_free_of_accelerate():
    """The checkpoint format is read by sample.py and the server, which never start accelerate."""
    assert not {m for m in imports(modules()["gpt.checkpoint"]) if m.startswith("accelerate")}


def test_the_library_never_imports_the_entry_scripts():
    for name, path in modules().items():
        assert not {"train", "sample"} & imports(path), f"{name} imports an entry script"
