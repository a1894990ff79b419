"""Generate the Python gRPC code in ``services/common/pb`` from ``protos/``.

protoc names imports after the proto package (``from llmsvc.v1 import x_pb2``);
we flatten ``llmsvc/v1`` into one package and rewrite those imports to relative
ones, so the generated code needs no extra top-level package on ``sys.path``.
Run ``python -m services.common.protogen`` after editing a proto; a test fails
when the committed code drifts from the protos.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
OUT_DIR = Path(__file__).resolve().parent / "pb"
_IMPORT = re.compile(r"^from llmsvc\.v1 import (\w+)", re.MULTILINE)


def generate(out_dir: Path = OUT_DIR) -> list[Path]:
    """Compile every proto under protos/llmsvc/v1 into ``out_dir``; return the files."""
    from grpc_tools import protoc  # imported lazily: only needed at generation time

    protos = sorted(PROTO_DIR.glob("llmsvc/v1/*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *map(str, protos),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("*_pb2*.py*"):
            old.unlink()
        written = []
        for src in sorted((Path(tmp) / "llmsvc" / "v1").iterdir()):
            text = _IMPORT.sub(r"from . import \1", src.read_text())
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    (out_dir / "__init__.py").write_text(
        '"""Generated from protos/llmsvc/v1 by services.common.protogen. Do not edit."""\n')
    return written


def main() -> int:
    files = generate()
    print(f"generated {len(files)} files in {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
