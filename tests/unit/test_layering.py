"""The packages import only downward (streamrec < rl < actors < serve < cluster), and the learning
math loads neither Ray nor torch."""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLOORS = {"streamrec": 1, "rl": 2, "actors": 3, "serve": 4, "cluster": 5}


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_no_module_imports_a_package_above_its_own(package):
    upward = [f"{f.relative_to(ROOT)}:{line} imports {mod}"
              for f in sorted((ROOT / package).rglob("*.py")) for line, mod in _imports(f)
              if FLOORS.get(mod.split(".")[0], 0) > FLOORS[package]]
    assert upward == []


def test_the_learning_math_loads_neither_ray_nor_torch():
    """Policies, slate math, estimators, gate, features, the trainer loop and the join: numpy only."""
    modules = ["rl.policies", "rl.bandits", "rl.neural", "rl.slate", "rl.ope", "rl.gate", "rl.click_model",
               "rl.features", "rl.logged", "rl.trainer_loop", "rl.manifest", "rl.diversity", "rl.metrics",
               "rl.simulators", "rl.weights", "streamrec.join", "streamrec.events"]
    code = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules} & {'ray', 'torch', 'gymnasium'})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_the_learners_are_where_torch_and_rllib_live():
    code = "import sys, rl.learners.ppo; print('torch' in sys.modules and 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
