"""Loading model code and weights from optional packages without running their import side effects.

The packages that carry the pretrained models were written for other environments: aiSFX's
``__init__`` imports tqdm and argparse pins, ImageBind's imports its ``data.py`` (torchaudio,
torchvision, pytorchvideo, which do not import beside the torch this project pins) and its model
code imports two helpers from timm (which needs torchvision). So r2scp locates a package with
``importlib.util.find_spec`` (which does not execute it) and loads only the files it needs:

* :func:`load_file_module` -- a self-contained module file by path;
* :func:`import_bare_package` -- a submodule of a package whose ``__init__`` is skipped;
* :func:`stand_in_modules` -- small stand-ins (such as timm's ``DropPath``) visible only while
  that import runs.

:func:`torch_device` checks ``--device`` before any weights are read.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path
from typing import Iterator

import torch

from ..errors import UserError


def package_dir(package: str, encoder: str, install: str) -> Path:
    """The folder of an installed top-level package, found without importing it; a missing package
    is a one-line UserError that says how to install it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"encoder '{encoder}' needs the package '{package}': {install}")
    return Path(list(spec.submodule_search_locations)[0])


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The names among ``modules`` that cannot be found (nothing is imported)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def require_modules(modules: tuple[str, ...], encoder: str, install: str) -> None:
    """Fail with one line when any of ``modules`` cannot be found (nothing is imported here)."""
    missing = missing_modules(modules)
    if missing:
        raise UserError(f"encoder '{encoder}' needs {', '.join(missing)}: {install}")


def distribution_version(name: str) -> str:
    """Installed version of a distribution, or "unknown" for a source checkout."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def load_file_module(path: Path, name: str) -> types.ModuleType:
    """Execute one module file (which must not import its own package) and return it."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def import_bare_package(package: str, folder: Path, submodule: str) -> types.ModuleType:
    """Import ``package.submodule`` with ``package`` registered as an empty package over ``folder``,
    so the package's own ``__init__`` never runs. A package already imported is used as it is."""
    if package not in sys.modules:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
        sys.modules[package] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"{package}.{submodule}")


@contextlib.contextmanager
def stand_in_modules(modules: dict[str, types.ModuleType]) -> Iterator[None]:
    """Make ``modules`` importable by name for the duration of the block, then restore whatever
    ``sys.modules`` held before (objects imported from them inside the block stay bound)."""
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def torch_device(name: str) -> torch.device:
    """``--device`` as a torch device; a CUDA device this torch cannot see is a one-line UserError."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA device")
    return device
