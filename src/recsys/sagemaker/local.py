"""SageMaker offline, under one name: the training job (:mod:`.training_job`), the local endpoint
(:mod:`.endpoint`) and the transform job (:mod:`.transform`).

This module only re-exports them, so that ``from recsys.sagemaker.local import ...`` in notebooks
and user code keeps working; new code imports from the modules themselves.
"""

from __future__ import annotations

from .endpoint import (  # noqa: F401
    ACCOUNT,
    DEFAULT_ACCEPT,
    VARIANT,
    LocalEndpoint,
    _Handler,
    _load_handlers,
    deploy_local,
    package_model,
)
from .training_job import (  # noqa: F401
    REGION,
    TRAINING_MODULE,
    BriefLog,
    TrainingJob,
    TrainingJobError,
    _add_model_dir,
    _cli_args,
    _decode,
    _pack,
    _sourcedir_tar,
    run_training_job,
    toolkit_env,
)
from .transform import TransformJob, TransformJobError, run_transform  # noqa: F401
