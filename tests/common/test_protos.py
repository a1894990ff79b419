"""The committed gRPC code must be exactly what protoc generates from protos/.

The one line that records which grpcio-tools wrote the code (GRPC_GENERATED_VERSION, the lowest grpcio
the code runs on) is left out of the comparison: a newer patch release of the tools on the package index
changes that line only, and pyproject.toml's grpcio floor is what guarantees the runtime.
"""

import re
from pathlib import Path

from services.common import protogen

_TOOLS_VERSION = re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'$", re.M)


def _code(path: Path) -> str:
    return _TOOLS_VERSION.sub("GRPC_GENERATED_VERSION = <tools version>", path.read_text())


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    fresh = {p.name: _code(p) for p in protogen.generate(tmp_path)}
    committed = {p.name: _code(p) for p in protogen.OUT_DIR.glob("*_pb2*.py*")}
    assert fresh.keys() == committed.keys(), "run: python -m services.common.protogen"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"generated code is stale for {stale}; run: python -m services.common.protogen"


def test_generated_imports_are_relative() -> None:
    for path in protogen.OUT_DIR.glob("*_pb2*.py"):
        assert "from llmsvc.v1 import" not in path.read_text(), path.name


def test_generated_code_runs_on_the_declared_grpcio_floor() -> None:
    """The committed code's GRPC_GENERATED_VERSION must not be above pyproject.toml's grpcio floor, or an
    install that resolves the floor would fail at import."""
    floor = re.search(r'"grpcio>=([0-9.]+)', (protogen.OUT_DIR.parents[2] / "pyproject.toml").read_text())
    assert floor, "pyproject.toml declares no grpcio floor"
    need = tuple(int(x) for x in floor.group(1).split("."))
    for path in protogen.OUT_DIR.glob("*_pb2_grpc.py"):
        found = re.search(r"^GRPC_GENERATED_VERSION = '([0-9.]+)'$", path.read_text(), re.M)
        assert found, path.name
        assert tuple(int(x) for x in found.group(1).split(".")) <= need, (path.name, found.group(1), need)
