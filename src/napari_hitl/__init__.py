"""napari-hitl: human-in-the-loop segmentation for napari.

The core (everything outside :mod:`napari_hitl.napari`) is numpy in, numpy out and never
imports napari or Qt; :mod:`napari_hitl.napari` holds the widgets, readers and writers.
"""

__version__ = "0.1.0"
