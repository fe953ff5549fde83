"""`r2scp doctor`: what it reports, the fixes it names, the traps it detects, and that it always exits 0."""

from __future__ import annotations

import hashlib
import importlib.util
import json

from typer.testing import CliRunner

from r2scp_cli import doctor
from r2scp_cli.cli import app
from r2scp_cli.encoders import imagebind, pretrained

runner = CliRunner()


def _json(*args: str) -> dict:
    result = runner.invoke(app, ["doctor", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_reports_python_torch_packages_and_every_encoder(monkeypatch):
    monkeypatch.delenv(imagebind.CHECKPOINT_ENV, raising=False)
    report = _json()
    import torch

    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cuda_available"] == torch.cuda.is_available()
    assert report["packages"]["h5py"] == importlib.metadata.version("h5py")
    assert report["packages"]["hnswlib"] == importlib.metadata.version("hnswlib")
    assert set(report["encoders"]) == {"handcrafted", "npy", "pretrained", "imagebind"}
    assert report["encoders"]["handcrafted"]["usable"] is True
    assert report["encoders"]["pretrained"]["usable"] == (pretrained.missing_parts() == [])
    ib = report["encoders"]["imagebind"]
    assert ib["usable"] is False
    assert imagebind.CHECKPOINT_ENV in ib["fix"] or ib["fix"] == imagebind.INSTALL


def test_a_missing_pretrained_wheel_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aisfx" else real(name, *a))
    status = doctor.encoder_report(None)["pretrained"]
    assert status["usable"] is False
    assert "package aisfx" in status["detail"]
    assert status["fix"] == pretrained.INSTALL


def test_imagebind_checkpoint_is_found_and_hashed(tmp_path, monkeypatch):
    monkeypatch.setattr(imagebind, "missing_parts", lambda: [])  # model code present
    checkpoint = tmp_path / "imagebind_huge.pth"
    checkpoint.write_bytes(b"not really a checkpoint" * 100)
    monkeypatch.setenv(imagebind.CHECKPOINT_ENV, str(checkpoint))
    status = doctor.encoder_report(None)["imagebind"]
    assert status["usable"] is True and status["fix"] is None
    assert status["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert status["checkpoint_bytes"] == 2300
    status = doctor.encoder_report(tmp_path / "absent.pth")["imagebind"]  # --checkpoint wins over the variable
    assert status["usable"] is False and status["checkpoint_found"] is False
    assert "absent.pth not found" in status["detail"]
    monkeypatch.delenv(imagebind.CHECKPOINT_ENV)
    status = doctor.encoder_report(None)["imagebind"]
    assert status["usable"] is False and imagebind.CHECKPOINT_ENV in status["fix"]


def test_import_order_trap_is_detected_and_explained(monkeypatch):
    def probe(code: str) -> dict:
        if code == "import h5py, torch":
            return {"ok": False, "returncode": -11, "signal": 11, "error": ""}
        return {"ok": True, "returncode": 0, "signal": None, "error": None}

    monkeypatch.setattr(doctor, "import_probe", probe)
    found = doctor.traps({"importable": True, "version": "2.13.0", "cuda_build": "12.4", "cuda_available": False},
                         {"numpy": "1.23.5"})  # fmt: skip
    by_name = {t["trap"]: t for t in found}
    order = by_name["importing h5py before torch fails"]
    assert "signal 11" in order["seen"] and "torch first works" in order["seen"]
    assert "import torch before h5py" in order["do"]
    assert "CUDA 12.4" in by_name["a CUDA build of torch without a usable GPU"]["seen"]
    assert "--no-deps" in by_name["numpy downgraded below 1.24"]["do"]


def test_import_probe_reports_a_crash_of_the_child():
    crashed = doctor.import_probe("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert crashed["ok"] is False and crashed["signal"] == 11
    assert doctor.import_probe("import json")["ok"] is True


def test_doctor_exits_zero_even_when_a_probe_breaks(monkeypatch):
    def broken(checkpoint):
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "encoder_report", broken)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0
    assert "boom" in result.output
