"""The image recipe installs what `make install` installs: the same torch pin, the same package and
every package directory, as a non-root user, starting nothing. (No Docker daemon here: the
recipe is checked as text against the Makefile and pyproject.toml.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)
    assert m, f"Dockerfile has no ARG {name}=..."
    return m.group(1)


def test_torch_pin_is_the_makefiles():
    make = re.search(r"^TORCH_VERSION := (\S+)$", MAKEFILE, re.M).group(1)
    assert _arg("TORCH_VERSION") == make
    assert "torch==$(TORCH_VERSION)" in MAKEFILE and '"torch==${TORCH_VERSION}"' in DOCKERFILE
    assert _arg("TORCH_INDEX").endswith("/cpu")  # CPU unless the build argument names a CUDA index


def test_python_satisfies_requires_python():
    want = tuple(int(x) for x in re.match(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"]).groups())
    assert tuple(int(x) for x in _arg("PYTHON_VERSION").split(".")) >= want


def test_every_package_is_copied_and_installed_from_pyproject():
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\S+) \./\1$", DOCKERFILE, re.M))
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert re.search(r"^COPY pyproject\.toml .*\./$", DOCKERFILE, re.M)
    assert re.search(r"^RUN pip install \. ", DOCKERFILE, re.M)  # the project's own dependency pins
    assert "-e '.[dev]'" in MAKEFILE  # make install: the same package, plus the dev tools


def test_runs_as_a_non_root_user_and_starts_nothing():
    users = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.findall(r"^CMD (.+)$", DOCKERFILE, re.M) == ['["bash"]'] and "ENTRYPOINT" not in DOCKERFILE


def test_dockerignore_keeps_local_state_out():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".streamrec", "*.parquet", "*.safetensors"} <= ignored
