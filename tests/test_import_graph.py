"""The import graph: the tokenizer, checkpoint I/O and `jlm convert` are numpy work and must run
where JAX is not installed; and no jlm module imports another inside a function to dodge a cycle."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

NO_JAX = r"""
import sys, shutil
from pathlib import Path
root, out = Path(sys.argv[1]), Path(sys.argv[2])
from jlm.tokenizer import load_tokenizer
from jlm.checkpoint import read_config, iter_tensors
from jlm.cli import main
tok = load_tokenizer(root / "tests/fixtures/tiny_sp")
assert tok.encode("hello world"), "no ids"
shutil.copytree(root / "tests/fixtures/tiny_sp", out / "src")
for f in (root / "tests/fixtures/tiny_mha").iterdir():
    shutil.copy(f, out / "src" / f.name)
assert main(["convert", str(out / "src"), str(out / "dst"), "--dtype", "bfloat16"]) == 0
assert len(list(iter_tensors(out / "dst"))) == len(list(iter_tensors(out / "src")))
load_tokenizer(out / "dst")
heavy = sorted(m for m in ("jax", "jaxlib", "flax", "optax", "orbax") if m in sys.modules)
print("HEAVY", heavy)
"""


def test_tokenizer_checkpoint_and_convert_import_no_jax(tmp_path):
    r = subprocess.run([sys.executable, "-c", NO_JAX, str(ROOT), str(tmp_path)], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout, r.stdout


def _in_function_jlm_imports(path: Path) -> list[str]:
    found = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith("jlm"):
                    found.append(f"{path.relative_to(ROOT)}:{sub.lineno} from {sub.module}")
    return found


# Deliberately lazy, and no cycle behind them: `import jlm` and the CLI dispatcher stay cheap (a
# command imports only its own module), and the train CLI must set XLA flags before JAX loads.
LAZY = {"jlm/__init__.py", "jlm/cli.py", "jlm/train/__init__.py", "jlm/train/cli.py", "jlm/infer/__init__.py",
        "jlm/infer/cli.py", "jlm/compile_cache.py"}


def test_no_in_function_imports_of_jlm_modules_outside_the_entry_points():
    found = [hit for p in sorted((ROOT / "jlm").rglob("*.py")) if str(p.relative_to(ROOT)) not in LAZY
             for hit in _in_function_jlm_imports(p)]
    assert not found, "\n".join(found)
