"""Data toolkit: turns a folder of raw 3D assets into the training dataset layout (see README.md).

Each step is a script: ``python -m data_toolkit.<step> --root R ...`` (or ``python data_toolkit/<step>.py``).
The logic lives in :mod:`pixal3d.data`.
"""
