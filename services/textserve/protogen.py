"""Generates the Python protobuf/gRPC stubs from protos/ (the one way to make them).

`make proto` runs this module; tests/unit/test_protos_fresh.py regenerates into a
temporary folder and fails when the committed stubs differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
OUT_ROOT = REPO_ROOT / "services"

# (import-path prefix, folder under protos/) — the prefix decides the Python package
# the generated code lands in, so the Open Inference Protocol stubs live inside
# textserve.oip while keeping their wire package `inference`.
PROTO_PACKAGES: tuple[tuple[str, str], ...] = (
    ("textserve/v1", "textserve/v1"),
    ("textserve/oip", "inference"),
)

PACKAGE_DOCSTRINGS: dict[str, str] = {
    "textserve/v1": "Generated protobuf stubs (make proto); do not edit.",
    "textserve/oip": (
        "Open Inference Protocol v2 (KServe / Triton): the generated stubs (make proto; do not edit\n"
        "the *_pb2* files) and the protocol plumbing every model service's adapter uses: `tensors`\n"
        "and `parameters` convert the protocol's tensors and parameters, `model` is the adapter\n"
        "contract, `registry` resolves model names and versions, `servicer` serves\n"
        "inference.GRPCInferenceService for the adapters of one server."
    ),
}
"""Docstring of each generated package's __init__.py."""


def proto_files() -> list[str]:
    """Import paths of every proto file to compile, in a stable order."""
    files: list[str] = []
    for prefix, folder in PROTO_PACKAGES:
        for path in sorted((PROTO_ROOT / folder).glob("*.proto")):
            files.append(f"{prefix}/{path.name}")
    return files


def generate(out_root: Path, descriptor_set: Path | None = None) -> None:
    """Compiles every proto into `out_root` (python, grpc and .pyi stubs)."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency, imported only when generating

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{include}"]
    for prefix, folder in PROTO_PACKAGES:
        args.append(f"-I{prefix}={PROTO_ROOT / folder}")
    args += [f"--python_out={out_root}", f"--grpc_python_out={out_root}", f"--pyi_out={out_root}"]
    if descriptor_set is not None:
        args += [f"--descriptor_set_out={descriptor_set}", "--include_source_info", "--include_imports"]
    args += proto_files()
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}: {' '.join(args)}")
    for prefix, _ in PROTO_PACKAGES:
        package_dir = out_root / prefix
        if package_dir.is_dir():
            init = package_dir / "__init__.py"
            if not init.exists():
                init.write_text(f'"""{PACKAGE_DOCSTRINGS[prefix]}"""\n')


def generated_files(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every generated stub under `root`."""
    result: dict[str, bytes] = {}
    for prefix, _ in PROTO_PACKAGES:
        base = root / prefix
        if not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "__init__.py")):
                result[f"{prefix}/{path.name}"] = path.read_bytes()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT_ROOT)
    args = parser.parse_args(argv)
    for prefix, _ in PROTO_PACKAGES:
        target = args.out / prefix
        if target.is_dir():
            for path in target.iterdir():
                if path.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")):
                    path.unlink()
    generate(args.out)
    print(f"generated {len(proto_files())} proto files into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
