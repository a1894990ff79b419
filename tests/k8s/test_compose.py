"""docker-compose.yml, checked statically (no Docker engine here): it validates against the
Compose Specification's JSON schema (vendored by check-jsonschema), and runs every service with
real PostgreSQL and Redis images from images this repository's Dockerfile builds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .test_images import _stages

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _check(path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    if not Path(exe).exists():
        pytest.fail("check-jsonschema is missing: pip install -e '.[dev]'")
    return subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True)


def test_compose_file_matches_the_compose_spec():
    result = _check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_misspelt_key(tmp_path):
    bad = tmp_path / "compose.yml"
    bad.write_text(COMPOSE.read_text().replace("    ports:\n", "    prots:\n"))
    assert "prots" in _check(bad).stdout


def test_full_stack_with_real_databases():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"gateway", "auth", "router", "worker", "trainer", "eval", "postgres", "redis", "migrate"} <= set(services)
    assert services["postgres"]["image"].startswith("docker.io/library/postgres:")
    assert services["redis"]["image"].startswith("docker.io/library/redis:")
    targets = set(_stages())
    for name, svc in services.items():
        if "build" in svc:
            assert svc["build"]["dockerfile"] == "docker/Dockerfile" and svc["build"]["target"] in targets, name
            assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
    assert services["worker"]["build"]["target"] == "worker-cpu"
    assert services["auth"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["gateway"]["ports"] == ["127.0.0.1:8000:8000"]
    assert "postgres:5432" in services["auth"]["environment"]["LLMSVC_DATABASE_URL"]
    assert services["auth"]["environment"]["LLMSVC_REDIS_URL"] == "redis://redis:6379/0"
