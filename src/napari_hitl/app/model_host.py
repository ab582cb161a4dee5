"""The project's trainable model and the one name of its checkpoint.

The dock, ``napari-hitl simulate`` and the export all reach the model through
:class:`ModelHost`, so a model trained from the command line is the one the dock opens.
"""

from __future__ import annotations

from pathlib import Path

#: the model checkpoint's name in the project's models/ folder (``Project.load_checkpoint(CHECKPOINT)``)
CHECKPOINT = "segnet"


def checkpoint_path(project) -> Path:
    """Where the project's model checkpoint lives (``models/segnet.pt``)."""
    return project.checkpoint_dir / f"{CHECKPOINT}.pt"


def warm_up(ctx=None) -> str:
    """Import torch and build what first use of the model would (the optimiser machinery, SLIC),
    leaving one CPU core to the UI. Run on the worker when a project opens: imports and first-time
    initialisation hold Python's GIL for up to a few hundred ms, which is better paid before the
    person starts clicking than during a click. Returns the device description."""
    import os

    import torch

    from napari_hitl.model.backbone import describe_device, select_device

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    import skimage.segmentation  # noqa: F401 - superpixels
    import distributed  # noqa: F401 - Predict & rank's Dask client: a long import, paid here, not mid-click
    from napari_hitl.model import segnet, train  # noqa: F401

    return describe_device(select_device())


class ModelHost:
    """The project's trainable model; lives on the worker thread (created on first use)."""

    def __init__(self, project):
        self.project = project
        self.trainer = None

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path(self.project)

    def get(self, settings=None):
        """The :class:`~napari_hitl.model.train.Trainer` (resumed from the project's checkpoint)."""
        from napari_hitl.model.train import Trainer

        if self.trainer is not None and self.trainer.num_classes != self.project.n_classes:
            self.trainer.save()  # a class was added: reload through the checkpoint, which grows the head
            settings = settings or self.trainer.settings
            self.trainer = None
        if self.trainer is None:
            self.trainer = Trainer(self.project.n_classes, checkpoint_path=self.checkpoint, settings=settings)
        elif settings is not None:
            self.trainer.settings = settings
        return self.trainer

    @property
    def trained(self) -> bool:
        """True once a round finished (now or in an earlier session)."""
        if self.trainer is not None:
            return bool(self.trainer.history)
        return self.checkpoint.exists()
