"""Data-toolkit step ``render_cond`` (see data_toolkit/README.md and :mod:`pixal3d.data.steps`).

Usage: ``python -m data_toolkit.render_cond --root R [--rank K --world_size N --workers W ...]``; ``--help`` lists the
options. Finished assets are skipped, failures go to ``R/logs/render_cond_failures_rank{K}.csv``, records to
``new_records/`` (merge them with ``python -m data_toolkit.build_metadata --root R --finalize``).
"""
try:
    from . import _bootstrap  # noqa: F401
except ImportError:  # run as a file
    import _bootstrap  # noqa: F401

from pixal3d.data.runner import run_step
from pixal3d.data.steps import RENDER_COND


def main(argv=None):
    """Runs the step; returns its :class:`pixal3d.data.runner.StepSummary`."""
    return run_step(RENDER_COND, argv)


if __name__ == "__main__":
    main()
