"""The only package that imports napari or Qt: widgets, worker, readers, writers, samples."""
