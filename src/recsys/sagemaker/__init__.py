"""SageMaker, faithfully offline: the script-mode entry point (:mod:`.entry`), local emulation of a
training job (:mod:`.training_job`), an endpoint (:mod:`.endpoint`) and a transform job
(:mod:`.transform`), all three re-exported by :mod:`.local`; AWS's real serving stack run locally
(:mod:`.container`), the container bundle (:mod:`.bundle`) and the real
SDK helpers for ``mode="aws"`` (:mod:`.aws`).

Nothing is imported here on purpose: the entry point runs in the MXNet 1.9 container (Python
3.8), which has neither the SageMaker SDK nor the kit's other dependencies.
"""
