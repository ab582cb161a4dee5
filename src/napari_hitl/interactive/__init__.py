"""Prompt -> mask engines behind one interface (see :mod:`.engine`)."""
