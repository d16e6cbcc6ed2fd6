"""Regenerate the committed Python stubs from proto/chorus/v1/*.proto.

Uses the grpcio-tools version pinned in pyproject's `dev` extra, so the output is
reproducible: `python scripts/gen_proto.py` (or `--check` to fail when stale).
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = PROTO_ROOT / "chorus" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into out_dir; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE_DIR.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_dir / "chorus" / "v1").iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if committed stubs differ")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            target = PACKAGE_DIR / path.name
            new = path.read_text()
            old = target.read_text() if target.exists() else ""
            if new != old:
                stale.append(target)
                if args.check:
                    sys.stdout.writelines(difflib.unified_diff(
                        old.splitlines(True), new.splitlines(True), str(target), "regenerated", n=1))
                else:
                    shutil.copyfile(path, target)
        if args.check and stale:
            print(f"stale generated stubs: {', '.join(p.name for p in stale)}; run scripts/gen_proto.py")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
