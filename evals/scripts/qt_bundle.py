"""Build `.whl-qt/`: the slim Qt that `python -m app` needs offscreen, for a GPU machine that has none.

The GPU machines' image (Ubuntu 24.04, Python 3.12) has no PySide6, no display and few desktop libraries,
and what travels there with the code is held to 64 MiB, while the PySide6-Essentials wheel alone is 84 MB.
This keeps only what the app loads under the offscreen platform:

- the PySide6 modules the app imports (read from app/*.py: QtCore, QtGui and QtWidgets today), libpyside6
  and shiboken6, from the cp312 manylinux wheels (abi3; downloaded with pip unless --wheels names a folder
  holding them, or --site an installed PySide6);
- the Qt libraries those link to, and the offscreen platform plugin with what it links to;
- the system libraries of this (Debian or Ubuntu) host that any of them link to, the ELF closure of
  DT_NEEDED (read with binutils' readelf, found through `ldconfig -p`) minus glibc, libstdc++ and libgcc
  and minus libX11 and libxcb, which the image has (with what they need in turn);
- one font (DejaVu Sans) and a fontconfig file naming it, since the image has no fonts;
- the mss wheel: the app lists the screens through it (pure Python, and none on a machine with no display).

Written to --out (default .whl-qt, gitignored; a new or empty folder): streamvlm-qt-VERSION.tar.xz (one
solid xz archive, smaller than the wheels' per-file deflate) and the mss wheel. evals/scripts/gpu_env.sh unpacks
the archive into /tmp/site, removes the bundled system libraries the machine has its own copy of, and
points LD_LIBRARY_PATH, QT_PLUGIN_PATH and FONTCONFIG_FILE at the rest (pip installs the mss wheel).

Checked before it is packed (`check`): every bundled library's needs resolve inside the bundle or to the
libraries allowed above, and a Python (3.12 where one is found, else --python or this one: the modules are
abi3) with only the bundle on its path starts a QApplication offscreen and shows a widget, and every shared
library that added to the process is the bundle's or an allowed one (so nothing of this host's own desktop
libraries was needed), with the bundle's font found.

Usage: python evals/scripts/qt_bundle.py [--out .whl-qt] [--wheels DIR | --site DIR] [--python PY]
"""

from __future__ import annotations

import argparse
import ast
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBS = "streamvlm-qt-libs"  # the system libraries, in the archive's root (LD_LIBRARY_PATH)
FONTS = "streamvlm-qt-fonts"  # the font and its fontconfig file (FONTCONFIG_FILE)
PLUGINS = ("platforms/libqoffscreen.so",)  # under PySide6/Qt/plugins
FONT = "DejaVuSans.ttf"
# Every Linux has these (glibc, and the C++ runtime Python's own builds link to).
BASE = re.compile(
    r"^(libc|libm|libdl|libpthread|librt|libutil|libresolv|ld-linux-x86-64|libstdc\+\+|libgcc_s)\.so"
)
ON_THE_IMAGE = ("libX11.so.6", "libxcb.so.1")  # the GPU image has these (`ldconfig -p` there), not the rest
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64")
TARGET_MB = 25  # what leaves room beside the repository and .whl under the 64 MiB that travel
FONTS_CONF = """<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">
<!-- The bundle's font, for a machine without any (evals/scripts/qt_bundle.py). -->
<fontconfig>
  <dir prefix="relative">.</dir>
  <cachedir prefix="xdg">fontconfig</cachedir>
</fontconfig>
"""
# Run by `check` in a fresh Python: argv[1] is the bundle. Prints what loaded, as JSON.
PROBE = """
import json, sys
def loaded():
    with open("/proc/self/maps") as maps:
        return {line.split()[-1] for line in maps if ".so" in line.rsplit("/", 1)[-1]}
sys.path.insert(0, sys.argv[1])
before = loaded()
import PySide6
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QApplication, QLabel
app = QApplication(["probe"])
label = QLabel("streamvlm")
label.show()
app.processEvents()
print(json.dumps({"pyside": PySide6.__file__, "platform": app.platformName(), "prefix": sys.base_prefix,
                  "fonts": QFontDatabase.families(), "added": sorted(loaded() - before)}))
"""


class BundleError(Exception):
    """A bundle that cannot be built or does not work: one sentence."""


# -- what the app needs ----------------------------------------------------------------------------------


def app_qt_modules(app_dir: Path = ROOT / "app") -> list[str]:
    """The PySide6 modules the app's sources import (`from PySide6.QtX import ...`, `from PySide6 import QtX`)."""
    found = set()
    for path in sorted(app_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                parts = node.module.split(".")
                if parts[0] == "PySide6" and len(parts) > 1:
                    found.add(parts[1])
                elif node.module == "PySide6":
                    found.update(a.name for a in node.names if a.name.startswith("Qt"))
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("PySide6.Qt"))
    return sorted(found)


# -- ELF -------------------------------------------------------------------------------------------------


def needed(path: Path) -> list[str]:
    """The DT_NEEDED entries of a shared library."""
    return _dynamic(str(path))[1]


def soname(path: Path) -> str:
    """A shared library's own name (DT_SONAME; its file name where it has none)."""
    return _dynamic(str(path))[0] or Path(path).name


@cache
def _dynamic(path: str) -> tuple[str, list[str]]:
    """DT_SONAME and DT_NEEDED, read with binutils' readelf."""
    try:
        out = subprocess.run(
            ["readelf", "-d", "--wide", path], capture_output=True, text=True, check=True
        ).stdout
    except FileNotFoundError:
        raise BundleError("readelf is missing; install binutils (apt-get install binutils)") from None
    except subprocess.CalledProcessError as exc:
        raise BundleError(f"readelf cannot read {path}: {exc.stderr.strip()[:200]}") from None
    own = re.findall(r"\(SONAME\)\s+Library soname: \[([^\]]+)\]", out)
    return (own[0] if own else ""), re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


@cache
def system_libraries() -> dict[str, Path]:
    """This host's x86-64 libraries by name, from the dynamic loader's cache (`ldconfig -p`)."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        raise BundleError(
            "ldconfig -p does not answer; build the bundle on a Debian or Ubuntu host"
        ) from None
    found: dict[str, Path] = {}
    for name, arch, path in re.findall(r"^\s*(\S+) \(([^)]*)\) => (\S+)$", out, re.MULTILINE):
        if "x86-64" in arch:
            found.setdefault(name, Path(path))
    return found


def image_closure() -> set[str]:
    """The libraries the GPU image has: those named in ON_THE_IMAGE and (on this host) what they need."""
    have, todo = set(), list(ON_THE_IMAGE)
    while todo:
        name = todo.pop()
        if name in have or BASE.match(name):
            continue
        have.add(name)
        path = system_libraries().get(name)
        if path is not None:
            todo.extend(needed(path))
    return have


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


# -- building --------------------------------------------------------------------------------------------


def stage(source: Path, tree: Path, modules: Iterable[str]) -> None:
    """Copy into `tree` (a new folder) what the app needs from `source` (a folder holding PySide6/ and
    shiboken6/: unpacked wheels or a site-packages), with the system libraries and the font."""
    pyside, qt_lib = source / "PySide6", source / "PySide6" / "Qt" / "lib"
    if not (pyside / "__init__.py").is_file() or not (source / "shiboken6" / "__init__.py").is_file():
        raise BundleError(f"{source} holds no PySide6 and shiboken6 packages")
    files = [pyside / name for name in ("__init__.py", "_config.py", "_git_pyside_version.py")]
    files += sorted(pyside.glob("libpyside6.abi3.so*"))
    for module in modules:
        found = sorted(pyside.glob(f"{module}.abi3.so"))
        if not found:
            raise BundleError(f"the app imports PySide6.{module}, which {pyside} does not have")
        files += found
    files += [pyside / "Qt" / "plugins" / plugin for plugin in PLUGINS]
    shiboken = source / "shiboken6"
    files += [p for p in shiboken.iterdir() if p.is_file() and p.suffix != ".pyi"]
    files += [
        p for p in source.glob("*.dist-info/METADATA") if p.parent.name.startswith(("pyside6", "shiboken6"))
    ]
    for path in files:
        if not path.is_file():
            raise BundleError(f"{path} is missing from {source}")
        _copy(path, tree / path.relative_to(source))

    # The ELF closure: Qt's own libraries from the wheel, the rest from this host.
    present = {p.name for p in tree.rglob("*") if p.is_file() and is_elf(p)}
    todo = [p for p in tree.rglob("*") if p.is_file() and is_elf(p)]
    while todo:
        for name in needed(todo.pop()):
            if name in present or BASE.match(name) or name in ON_THE_IMAGE:
                continue
            if (qt_lib / name).is_file():
                origin, target = qt_lib / name, tree / "PySide6" / "Qt" / "lib" / name
            elif name in system_libraries():
                origin, target = system_libraries()[name], tree / LIBS / name
            else:
                raise BundleError(
                    f"{name} is needed but this host does not have it; install it and run again"
                )
            _copy(origin, target)
            present.add(name)
            todo.append(target)

    font = _font()
    _copy(font, tree / FONTS / FONT)
    (tree / FONTS / "fonts.conf").write_text(FONTS_CONF)


def _copy(origin: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(origin.resolve(), target)  # a link's file, under the name asked for
    shutil.copymode(origin.resolve(), target)


def _font() -> Path:
    """DejaVu Sans's file on this host: fontconfig's answer, else the usual font folders."""
    if shutil.which("fc-match"):
        answer = subprocess.run(
            ["fc-match", "-f", "%{file}", "DejaVu Sans:style=Book"], capture_output=True, text=True
        ).stdout.strip()
        if answer and Path(answer).name == FONT and Path(answer).is_file():
            return Path(answer)
    for folder in (Path("/usr/share/fonts"), Path("/usr/local/share/fonts")):
        found = sorted(folder.rglob(FONT)) if folder.is_dir() else []
        if found:
            return found[0]
    raise BundleError(f"{FONT} is not on this host; install fonts-dejavu-core and run again")


def pack(tree: Path, archive: Path) -> None:
    """`tree` as one solid xz tar, at xz's strongest setting (it is packed once, and travels every call)."""
    with tarfile.open(archive, "w:xz", preset=9 | lzma.PRESET_EXTREME) as tar:
        for path in sorted(tree.iterdir()):
            tar.add(path, arcname=path.name)


# -- checking --------------------------------------------------------------------------------------------


def bundle_env(tree: Path) -> dict[str, str]:
    """What gpu_env.sh sets for the bundle, for a process that is to use it."""
    return {
        "LD_LIBRARY_PATH": str(tree / LIBS),
        "QT_PLUGIN_PATH": str(tree / "PySide6" / "Qt" / "plugins"),
        "FONTCONFIG_FILE": str(tree / FONTS / "fonts.conf"),
        "QT_QPA_PLATFORM": "offscreen",
    }


def check(tree: Path, python: str) -> dict:
    """Raise BundleError unless the bundle in `tree` is whole and starts Qt offscreen on its own."""
    inside = str(tree.resolve()) + os.sep
    allowed = image_closure()

    def foreign(path: str) -> bool:
        name = soname(Path(path))
        return not path.startswith(inside) and not BASE.match(name) and name not in allowed

    # fontconfig's cache goes to a scratch folder: not into the bundle, not into this user's.
    with tempfile.TemporaryDirectory(prefix="streamvlm-qt-check-") as scratch:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch, "XDG_CACHE_HOME": scratch}
        env.update(bundle_env(tree))
        for path in sorted(p for p in tree.rglob("*") if p.is_file() and is_elf(p)):
            out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env).stdout
            missing = re.findall(r"^\s*(\S+) => not found", out, re.MULTILINE)
            outside = [p for p in re.findall(r"=> (/\S+)", out) if foreign(p)]
            if missing or outside:
                raise BundleError(
                    f"{path.relative_to(tree)} needs {', '.join(missing + outside)}, which the bundle lacks"
                )
        # -I: none of this user's or PYTHON* settings; -B: no bytecode written into the bundle.
        probe = subprocess.run(
            [python, "-I", "-B", "-c", PROBE, str(tree)], capture_output=True, text=True, env=env, timeout=120
        )
    if probe.returncode != 0:
        said = probe.stderr.strip().splitlines() or ["(nothing on stderr)"]
        raise BundleError(f"Qt does not start from the bundle with {python}: {said[-1][:300]}")
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    if not report["pyside"].startswith(inside):
        raise BundleError(f"{python} imported PySide6 from {report['pyside']}, not from the bundle")
    # What Python's own modules (zlib, bz2, ...) load is the Python's, which the image has too.
    own = [p for p in report["added"] if p.startswith(report["prefix"] + os.sep)]
    theirs = {name for p in own for name in needed(Path(p))}
    outside = [p for p in report["added"] if p not in own and foreign(p) and soname(Path(p)) not in theirs]
    if outside:
        raise BundleError(f"starting Qt loaded {', '.join(outside)} from outside the bundle")
    if report["platform"] != "offscreen" or "DejaVu Sans" not in report["fonts"]:
        raise BundleError(f"Qt started on {report['platform']!r} with fonts {report['fonts']}, not as asked")
    return report


def find_python() -> str:
    """A Python 3.12 as the GPU image has (pyenv's or the system's), else this one."""
    candidates = sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))
    which = shutil.which("python3.12")
    if which and "/shims/" not in which:  # a pyenv shim needs pyenv's environment to run
        candidates.append(which)
    return candidates[0] if candidates else sys.executable


# -- the command -----------------------------------------------------------------------------------------


def download(folder: Path, *requirements: str) -> list[Path]:
    """Wheels for CPython 3.12 on x86-64 Linux, as the GPU image needs them."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder)]
    result = subprocess.run([*command, *requirements], capture_output=True, text=True)
    if result.returncode != 0:
        said = result.stderr.strip().splitlines() or ["(nothing on stderr)"]
        raise BundleError(f"pip could not download {' '.join(requirements)}: {said[-1][:200]}")
    return sorted(folder.glob("*.whl"))


def build(out: Path, *, wheels: Path | None, site: Path | None, python: str, version: str) -> Path:
    """The bundle and the mss wheel in `out`; returns the archive."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} is not an empty folder; remove it or pass --out a new one")
    with tempfile.TemporaryDirectory(prefix="streamvlm-qt-") as work:
        work = Path(work)
        if site is None:
            if wheels is None:
                wheels = work / "wheels"
                download(wheels, f"PySide6-Essentials=={version}", f"shiboken6=={version}")
            site = work / "site"
            found = sorted(wheels.glob("pyside6_essentials-*.whl")) + sorted(wheels.glob("shiboken6-*.whl"))
            if len(found) < 2:
                raise BundleError(f"{wheels} holds no pyside6_essentials and shiboken6 wheels")
            for wheel in found:
                with zipfile.ZipFile(wheel) as z:
                    z.extractall(site)
        tree = work / "tree"
        modules = app_qt_modules()
        stage(site, tree, modules)
        check(tree, python)
        out.mkdir(parents=True, exist_ok=True)
        archive = out / f"streamvlm-qt-{version}.tar.xz"
        pack(tree, archive)
        mss = download(work / "mss", f"mss=={_installed('mss') or '10.2.0'}")
        for wheel in mss:
            shutil.copy2(wheel, out / wheel.name)
    print(
        f"{archive}: {archive.stat().st_size / 1e6:.1f} MB (PySide6 {', '.join(modules)}, checked with {python})"
    )
    return archive


def _installed(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".whl-qt", help="a new or empty folder")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--wheels", type=Path, help="a folder holding the PySide6-Essentials and shiboken6 wheels"
    )
    where.add_argument(
        "--site", type=Path, help="a site-packages folder with PySide6 and shiboken6 installed"
    )
    parser.add_argument("--python", default=None, help="the Python that checks the bundle (default: a 3.12)")
    parser.add_argument(
        "--version", default=_installed("PySide6-Essentials") or "6.12.0", help="the PySide6 version"
    )
    args = parser.parse_args(argv)
    try:
        archive = build(
            args.out,
            wheels=args.wheels,
            site=args.site,
            python=args.python or find_python(),
            version=args.version,
        )
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = archive.stat().st_size / 1e6
    if size > TARGET_MB:
        print(
            f"warning: {size:.1f} MB is over the {TARGET_MB} MB that leaves room for the rest",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
