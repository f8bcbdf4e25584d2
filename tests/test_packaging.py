"""A built, non-editable wheel carries prompts/ and recipes/ and finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_and_uses_bundled_prompts_and_recipes(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = dist.glob("moa_pipeline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "moa/_data/prompts/aggregate.j2" in names
    assert {
        f"moa/_data/recipes/{n}.yaml" for n in ("moa", "moa-lite", "moa-gpt4o", "self-moa", "self-moa-seq")
    } <= names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
    )
    code = (
        "import moa, moa._resources as r; "
        "assert r.data_dir('prompts').parent.name == '_data', r.data_dir('prompts'); "
        "print(moa.__file__); print(moa.load_recipe('moa').calls_per_query); "
        "print(moa.load_recipe('self-moa-seq').layers[1].compiled_template.source)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0].startswith(str(target))
    assert out[1] == "13"
    assert out[2].startswith(str(target)) and out[2].endswith("moa/_data/prompts/aggregate_seq.j2")
