"""The package root: the names it re-exports, a light ``import difflens``, and the README's Python example."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import difflens

ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_every_exported_name_resolves():
    for name in difflens.__all__:
        assert getattr(difflens, name) is not None, name
    assert difflens.report.write_json is not None  # imported on first use
    with pytest.raises(AttributeError, match="no attribute 'oracle'"):
        _ = difflens.oracle


def test_import_does_not_pull_plotting_or_cluster_packages():
    code = "import sys, difflens; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy = {"matplotlib", "diffusers", "dask", "distributed", "zarr", "faiss"}
    assert set(run.stdout.split()) & heavy == set()


def test_readme_example_runs_and_uses_exported_names():
    code = _readme_example()
    used = set(re.findall(r"\bdifflens\.(\w+)", code))
    assert used, "the README example no longer calls difflens"
    assert used <= set(difflens.__all__), used - set(difflens.__all__)
    # the same code on a small toy (digits' full curve takes half a minute)
    names: dict = {}
    exec(compile(code.replace('"digits"', '"toy:gmm:n=200"'), "README.md", "exec"), names)
    torch.testing.assert_close(names["x0_hat"], names["post"].mean.float())
    assert names["curve"].total
