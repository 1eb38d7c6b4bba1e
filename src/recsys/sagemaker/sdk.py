"""The SageMaker Python SDK v2, imported quietly: no v2-deprecation warning and no ``sagemaker.config
INFO`` lines about where it looked for defaults files (nothing an attendee acts on); warnings stay."""

from __future__ import annotations

import logging
import os


def import_sdk():
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    import sagemaker

    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
    return sagemaker
