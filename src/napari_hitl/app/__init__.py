"""The application layer: the use cases the dock and the command line share (no napari, no Qt)."""
