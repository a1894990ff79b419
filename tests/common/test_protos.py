"""The committed gRPC code must be exactly what protoc generates from protos/."""

from pathlib import Path

from services.common import protogen


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in protogen.generate(tmp_path)}
    committed = {p.name: p.read_text() for p in protogen.OUT_DIR.glob("*_pb2*.py*")}
    assert fresh.keys() == committed.keys(), "run: python -m services.common.protogen"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"generated code is stale for {stale}; run: python -m services.common.protogen"


def test_generated_imports_are_relative() -> None:
    for path in protogen.OUT_DIR.glob("*_pb2*.py"):
        assert "from llmsvc.v1 import" not in path.read_text(), path.name
