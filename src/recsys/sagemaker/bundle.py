"""The file bundle the SageMaker MXNet container receives (``source_dir``).

``build_bundle(dest)`` writes::

    recommender.py      the entry point (the seed's file name)
    requirements.txt    what the container pip-installs before running it (no install at run time)
    recsys/             the modules the entry point imports, and nothing else

The same bundle is what the local training job runs and what the local endpoint loads from
``model.tar.gz``'s ``code/``, so what is tested offline is what AWS gets.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ENTRY_POINT = "recommender.py"
#: recsys modules the entry point needs (training and inference), relative to the package.
MODULES = (
    "__init__.py", "constants.py", "progress.py", "mx.py", "model.py", "training.py", "metrics.py",
    "artifacts.py", "serving.py", "events.py", "prepare.py", "sagemaker/__init__.py", "sagemaker/entry.py",
)
#: Installed by the container from requirements.txt (MXNet 1.9 images ship mxnet and numpy).
REQUIREMENTS = ("pandas>=1.5,<2.1", "pyarrow>=14,<18", "tqdm>=4.66,<5")

ENTRY_SOURCE = '''"""SageMaker script-mode entry point of the recsys lab kit: training and inference handlers."""
import sys

from recsys.sagemaker.entry import input_fn, main, model_fn, output_fn, predict_fn  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
'''


def package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def build_bundle(dest) -> Path:
    """Write the bundle into ``dest`` (replaced if it exists) and return it."""
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "recsys" / "sagemaker").mkdir(parents=True)
    src = package_dir()
    for rel in MODULES:
        shutil.copyfile(src / rel, dest / "recsys" / rel)
    (dest / ENTRY_POINT).write_text(ENTRY_SOURCE)
    (dest / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    return dest


def bundle_files(dest) -> list:
    """Relative paths of every file in a bundle, sorted."""
    dest = Path(dest)
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
