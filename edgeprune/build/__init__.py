"""``edgeprune build``: prune a CNN to a device latency budget, end to end.

    config.py    the nested configuration (one source of defaults; flags map onto it)
    run.py       run_build: the stages in order, and the publish step
    stages.py    the stages: inputs, plan space, plans that fit, fine-tune and choose, artifact, before/after
    fitting.py   the re-search loop that judges plans on their own graphs
    cache.py     the build cache (one file per stage and stage configuration)
    result.py    what a build found (dataclasses -> the JSON summary and manifest sections)
    report.py    report.md and the accuracy-latency plot
"""

from edgeprune.build.config import BuildConfig
from edgeprune.build.result import BuildOutcome, BuildResult, Unreachable
from edgeprune.build.run import EXIT_OK, EXIT_UNREACHABLE, run_build

__all__ = ["BuildConfig", "BuildOutcome", "BuildResult", "Unreachable", "run_build", "EXIT_OK", "EXIT_UNREACHABLE"]
