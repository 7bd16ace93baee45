"""The build's one optional step: the scaling engine compiled to C with mypyc (the operator image does this).

Everything else about the package is in pyproject.toml. With ``WORKERPOOL_OPERATOR_COMPILE=1`` the modules of
``decide()``'s hot path are compiled from the same typed source (about 2.3 times as fast; docs/benchmarks.md,
"Scaling engine"); the build then needs a C compiler and Python's headers, and pip fetches mypy for it. Without
it (the default, and every editable install) the package is pure Python and behaves the same: a test builds
the compiled wheel and runs the engine's tests and its decision digest against it (tests/test_engine_compiled.py).

    WORKERPOOL_OPERATOR_COMPILE=1 pip install .
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

# The modules decide() runs through for every queue at every poll, and the observation types it reads. The
# rest of the engine (schedules, the wait watch, the executor) runs once per window or change: not worth a
# compiled copy.
COMPILED = [
    "operator/workerpool_operator/observation.py",
    "operator/workerpool_operator/engine/policy.py",
    "operator/workerpool_operator/engine/decide.py",
    "operator/workerpool_operator/engine/drain.py",
    "operator/workerpool_operator/engine/forecast.py",
    "operator/workerpool_operator/engine/spikes.py",
    "operator/workerpool_operator/engine/throughput.py",
    "operator/workerpool_operator/engine/waits.py",
]
COMPILE = os.environ.get("WORKERPOOL_OPERATOR_COMPILE", "") == "1"
MYPY = "mypy>=2.4,<2.5"  # the compiler, the version tests/test_engine_compiled.py was run with


def compiled() -> list[Extension]:
    if not COMPILE:
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # asked for its build requirements (setup_requires below) before mypy is there
        return []
    # The build environment has only setuptools and mypy: the engine's imports outside it (cronsim in
    # schedules.py, not compiled) are typed as Any there.
    extensions = list(mypycify(["--ignore-missing-imports", *COMPILED], opt_level="3"))
    for extension in extensions:
        # C does floating point as Python does only without fused multiply-adds, which compilers make of `a * b + c`
        # on arm64 by default (x86-64 has none in its baseline): a last bit off could tip a rounding of replicas.
        extension.extra_compile_args = [*extension.extra_compile_args, "-ffp-contract=off"]
    return extensions


setup(
    ext_modules=compiled(),
    setup_requires=[MYPY] if COMPILE else [],
)
