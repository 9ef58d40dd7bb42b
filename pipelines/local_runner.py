"""Prism, the local portable runner: where ``make prism`` puts it, and the one experiment every run on it gets.

Prism's bundle splits
---------------------
Prism (2.77) splits a bundle that makes no progress for a while, stateful stages' bundles too, and hands the keys of
the split-off elements to a new bundle while the first still runs with its own copy of their state: the bundle that
finishes last overwrites what the other wrote, and elements vanish from state (``docs/prism-split-state-loss.md``).
:func:`disable_prism_splits` turns the splits off on Prism; ``tests/pipelines/test_prism_split.py`` shows the state
whole with it. Why: docs/decisions/0008-prism-runs-without-bundle-splits.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions
from apache_beam.version import __version__ as beam_version

from pipelines.runners import run_capabilities

PRISM_ENV = "PRISM"
# Prism's experiment that stops it splitting bundles in progress (see the module docstring).
PRISM_NO_SPLIT_EXPERIMENT = "prism_disable_sdf_split"


def prism_binary() -> Path:
    """Where ``make prism`` puts Prism, Beam's Go runner, for the installed Beam (``$PRISM`` overrides it); it may be
    missing. Pass it to a run as ``--prism_location``: Beam would otherwise download it at run time."""
    default = Path.home() / ".cache" / "profilestream" / "prism" / f"v{beam_version}" / "prism"
    return Path(os.environ.get(PRISM_ENV, default))


def disable_prism_splits(options: PipelineOptions) -> None:
    """On a runner that splits bundles in progress (Prism), adds the experiment that keeps it from doing so, which
    loses stateful DoFns' state (see the module docstring); other runners' options are left as they are."""
    if run_capabilities(options).splits_bundles_in_progress:
        options.view_as(DebugOptions).add_experiment(PRISM_NO_SPLIT_EXPERIMENT)
