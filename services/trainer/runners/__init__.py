"""Job runners: where a training job's processes run (a local process or a Kubernetes Job)."""

from __future__ import annotations

from .base import Launch, Runner, RunState


def build_runner(settings) -> Runner:
    """The runner ``LLMSVC_TRAINER_RUNNER`` names."""
    if settings.runner == "kubernetes":
        from .kubernetes import KubernetesRunner

        return KubernetesRunner.from_settings(settings)
    from .local import LocalProcessRunner

    return LocalProcessRunner(settings.python, settings.trainer_module, settings.cancel_grace_s,
                              settings.memory_budget_gib)


__all__ = ["Launch", "Runner", "RunState", "build_runner"]
