"""Repack a Ray wheel without what Ray Serve does not use, so that it travels to a GPU machine.

The machines lent for GPU runs have no internet, and what travels with the code is held to 64 MiB in all;
the `ray` wheel alone is about 79 MB. Serve needs Ray's core (the raylet and GCS binaries, `_raylet.so`),
`ray.serve`, `ray.dashboard`'s agent (every node's raylet starts it) and the small packages those import.
What goes: the Java jars, RLlib, Tune, Train, Data, the LLM library, AIR, workflows, the
dashboard's web client (the dashboard is not started: `--include-dashboard false`) and the cluster
launchers' cloud providers. The native binaries lose their symbol tables (`strip --strip-unneeded`, where
`strip` is installed: tracebacks of a crash in Ray's C++ show addresses instead of names), and every file
is compressed with LZMA instead of deflate (Python's zipfile, which pip unpacks wheels with, reads both).
RECORD keeps each kept file's line, with the new hash and size of a stripped one, so pip still checks them.
Together: about 79 MB down to about 25 MB.

Usage: python evals/scripts/slim_ray_wheel.py ray-2.60.0-cp312-...whl [--out .whl]
(the slimmed wheel keeps its file name; it is written to --out, never over the input).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# Folders of the `ray` package that Serve never imports (checked: a deployment starts, serves a WebSocket and
# shuts down with all of these gone; see docs/serving.md, "Past one GPU").
DROPPED = (
    "ray/jars/",
    "ray/rllib/",
    "ray/tune/",
    "ray/train/",
    "ray/data/",
    "ray/llm/",
    "ray/air/",
    "ray/workflow/",
    "ray/dashboard/client/",
    "ray/dashboard/modules/data/",
    "ray/dashboard/modules/train/",
    "ray/autoscaler/_private/aliyun/",
    "ray/autoscaler/_private/aws/",
    "ray/autoscaler/_private/azure/",
    "ray/autoscaler/_private/gcp/",
    "ray/autoscaler/_private/kuberay/",
    "ray/autoscaler/_private/vsphere/",
    "ray/autoscaler/_private/spark/",
    "ray/autoscaler/aws/",
    "ray/autoscaler/azure/",
    "ray/autoscaler/gcp/",
    "ray/autoscaler/vsphere/",
    "ray/autoscaler/kuberay/",
)


def dropped(name: str) -> bool:
    return name.startswith(DROPPED) or "/tests/" in name


def stripped(data: bytes) -> bytes:
    """An ELF binary without its symbol tables (the same bytes where `strip` is missing or fails)."""
    tool = shutil.which("strip")
    if tool is None or not data.startswith(b"\x7fELF"):
        return data
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "binary"
        path.write_bytes(data)
        done = subprocess.run([tool, "--strip-unneeded", str(path)], capture_output=True)
        return path.read_bytes() if done.returncode == 0 else data


def record_line(name: str, data: bytes) -> str:
    """A RECORD line as the wheel spec writes it: path, urlsafe base64 sha256 without padding, size."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim(wheel: Path, out_dir: Path) -> Path:
    """The slimmed copy of `wheel` in `out_dir` (same file name); ValueError for anything but a ray wheel."""
    if not wheel.name.startswith("ray-") or wheel.suffix != ".whl":
        raise ValueError(f"{wheel.name} is not a ray wheel (ray-VERSION-...whl)")
    target = out_dir / wheel.name
    if target.resolve() == wheel.resolve():
        raise ValueError(f"--out {out_dir} holds the input wheel; write the slimmed one elsewhere")
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(partial, "w", zipfile.ZIP_LZMA) as dest:
        changed: dict[str, str] = {}  # path -> its new RECORD line
        record = None
        for info in source.infolist():
            if dropped(info.filename):
                continue
            if info.filename.endswith(".dist-info/RECORD"):
                record = info  # written last, once every stripped file's new hash is known
                continue
            data = source.read(info)
            if info.filename.endswith(".so") or info.external_attr >> 16 & 0o111:
                slimmer = stripped(data)
                if slimmer != data:
                    data, changed[info.filename] = slimmer, record_line(info.filename, slimmer)
            dest.writestr(info, data, compress_type=zipfile.ZIP_LZMA)
        if record is None:
            raise ValueError(f"{wheel.name} has no RECORD; it is not a complete wheel")
        lines = source.read(record).decode().splitlines()
        kept = [changed.get(name, line) for line in lines if not dropped(name := line.split(",", 1)[0])]
        dest.writestr(record, "\n".join(kept) + "\n", compress_type=zipfile.ZIP_LZMA)
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="the ray wheel, as pip downloaded it")
    parser.add_argument("--out", type=Path, default=Path(".whl"), help="folder for the slimmed wheel")
    args = parser.parse_args(argv)
    if not args.wheel.is_file():
        print(f"error: {args.wheel} is not a file; give the downloaded ray wheel", file=sys.stderr)
        return 2
    try:
        target = slim(args.wheel, args.out)
    except (ValueError, zipfile.BadZipFile) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    before, after = args.wheel.stat().st_size, target.stat().st_size
    print(f"{target}: {after / 2**20:.1f} MiB (from {before / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
