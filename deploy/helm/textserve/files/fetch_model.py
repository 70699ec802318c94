"""Fetch a model into a directory and check it: the chart's model init container.

    python fetch_model.py --uri hf://BAAI/bge-base-en-v1.5@<revision> --dest /models/own [--sha256 HEX]
    python fetch_model.py --uri https://models.example.com/bge.tar.gz --dest /models/own --sha256 HEX

hf://<repo>[@<revision>]  huggingface_hub.snapshot_download (in the textserve image); the
                          checksum is over the sorted "<sha256>  <path>" lines of every file.
https://...tar.gz|.tgz    streamed to disk, its sha256 checked, then extracted (members that
                          would land outside --dest are refused).
s3:// gs:// oci://        not here: use modelStorage.fetch.image/command with the cloud CLI
                          (or an OCI image volume); see docs/deploy.md "Model weights".

A marker file (.textserve-fetched) holding the uri and checksum makes a rerun on a
persistent volume a no-op. Exit codes: 0 fetched (or already there), 1 failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

MARKER = ".textserve-fetched"
CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """Hex sha256 of one file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(root: Path) -> str:
    """Hex sha256 of the sorted "<sha256>  <relative path>" lines of every file under root."""
    lines = sorted(
        f"{file_sha256(path)}  {path.relative_to(root).as_posix()}"
        for path in root.rglob("*")
        if path.is_file() and path.name != MARKER and ".cache" not in path.relative_to(root).parts
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def extract(archive: Path, dest: Path) -> None:
    """Extracts a tar archive into dest, refusing members outside it and links."""
    root = dest.resolve()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not (target == root or root in target.parents) or member.issym() or member.islnk():
                raise ValueError(f"archive member {member.name!r} would land outside {dest}")
        tar.extractall(root, filter="data")


def fetch_https(uri: str, dest: Path, sha256: str) -> str:
    """Downloads a tarball, checks it, extracts it; returns its sha256."""
    with tempfile.NamedTemporaryFile(dir=os.environ.get("TMPDIR", "/tmp"), delete=False) as tmp:
        with urllib.request.urlopen(uri, timeout=60) as reply:  # noqa: S310 (https only, checked)
            shutil.copyfileobj(reply, tmp, CHUNK)
    archive = Path(tmp.name)
    try:
        got = file_sha256(archive)
        if sha256 and got != sha256:
            raise ValueError(f"sha256 of {uri} is {got}, expected {sha256}")
        extract(archive, dest)
        return got
    finally:
        archive.unlink(missing_ok=True)


def fetch_hf(uri: str, dest: Path, sha256: str) -> str:
    """Downloads a Hugging Face repository snapshot, checks it; returns its tree sha256."""
    from huggingface_hub import snapshot_download

    repo, _, revision = uri.removeprefix("hf://").partition("@")
    snapshot_download(repo_id=repo, revision=revision or None, local_dir=dest)
    got = tree_sha256(dest)
    if sha256 and got != sha256:
        raise ValueError(f"sha256 of the files of {uri} is {got}, expected {sha256}")
    return got


def main(argv: list[str] | None = None) -> int:
    """Fetches --uri into --dest unless the marker says it is there already."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--sha256", default="")
    args = parser.parse_args(argv)
    if args.uri.startswith("https://") or args.uri.startswith("http://"):
        fetch = fetch_https
    elif args.uri.startswith("hf://"):
        fetch = fetch_hf
    else:
        print(f"fetch_model: {args.uri}: use modelStorage.fetch.image/command for this scheme", file=sys.stderr)
        return 2
    args.dest.mkdir(parents=True, exist_ok=True)
    marker = args.dest / MARKER
    wanted = f"{args.uri} {args.sha256}".strip()
    if marker.is_file() and marker.read_text().startswith(wanted):
        print(f"fetch_model: {args.uri} is already in {args.dest}")
        return 0
    try:
        got = fetch(args.uri, args.dest, args.sha256)
    except Exception as error:  # noqa: BLE001 (one line for the pod's termination message)
        print(f"fetch_model: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    marker.write_text(f"{wanted} {got}\n")
    print(f"fetch_model: {args.uri} -> {args.dest} (sha256 {got})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
