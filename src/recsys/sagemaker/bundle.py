"""The file bundles the SageMaker MXNet containers receive.

``build_bundle(dest)`` writes the training job's ``source_dir``::

    recommender.py      the entry point (the seed's file name): training and the inference handlers
    requirements.txt    what the training container pip-installs before running it
    recsys/             the modules the entry point imports, and nothing else

``build_bundle(dest, serving=True)`` writes the same without ``requirements.txt``: the model's
``code/`` for the inference container, which pip-installs ``code/requirements.txt`` at every
endpoint start (a network call each time) although serving needs only NumPy and MXNet, which the
image has.

The requirements keep ``import mxnet`` working in the MXNet 1.9 training image (Python 3.8,
numpy<1.20): pandas 2.0 for Python 3.8 would pull NumPy 1.24, whose removed ``np.bool`` breaks
MXNet 1.9.1, so NumPy is bounded too (a test resolves them for Python 3.8). The kit's own
environment satisfies them, so a local job's pip step installs nothing.

The same bundles are what the local training job runs (under AWS's own training toolkit) and what
the local endpoint and the real serving stack load from ``model.tar.gz``'s ``code/``, so what is
tested offline is what AWS gets.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ENTRY_POINT = "recommender.py"
#: recsys modules the entry point needs (training and inference), relative to the package.
MODULES = (
    "__init__.py", "constants.py", "progress.py", "mx.py", "model.py", "training.py", "metrics.py",
    "artifacts.py", "serving.py", "events.py", "prepare.py", "presets.py", "selection.py", "checkpoint.py",
    "distributed.py", "sequence.py", "pairs.py", "memory.py",
    "sagemaker/__init__.py", "sagemaker/entry.py",
)
#: Installed by the training container from requirements.txt (the MXNet 1.9 images ship mxnet and numpy<1.20).
REQUIREMENTS = ("numpy>=1.16,<1.24", "pandas>=1.1,<2.3", "pyarrow>=14,<18", "tqdm>=4.66,<5")

ENTRY_SOURCE = '''"""SageMaker script-mode entry point of the recsys lab kit: training and inference handlers."""
import sys

from recsys.sagemaker.entry import input_fn, main, model_fn, output_fn, predict_fn  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
'''


def package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def build_bundle(dest, serving: bool = False) -> Path:
    """Write the bundle into ``dest`` (replaced if it exists) and return it; ``serving=True``
    leaves out ``requirements.txt``."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "recsys" / "sagemaker").mkdir(parents=True)
    src = package_dir()
    for rel in MODULES:
        shutil.copyfile(src / rel, dest / "recsys" / rel)
    (dest / ENTRY_POINT).write_text(ENTRY_SOURCE)
    if not serving:
        (dest / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    return dest


def bundle_files(dest) -> list:
    """Relative paths of every file in a bundle, sorted."""
    dest = Path(dest)
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def mms_manifests(directory) -> list:
    """Files the Multi Model Server would take for its own ``MANIFEST.json`` (any case, in the
    directory or one level down): there must be none in a model directory."""
    d = Path(directory)
    found = [p for p in list(d.iterdir()) + [q for c in d.iterdir() if c.is_dir() for q in c.iterdir()]
             if p.name.lower() == "manifest.json"]
    return sorted(str(p.relative_to(d)) for p in found)
