"""Builds the compiled zygote and shepherd (tm/executor/_shepherd*.c); the rest of the
package's definition is in pyproject.toml.

The extension is optional: where it cannot be built (no C compiler, no Python headers), the
package installs without it and the executor uses the Python zygote and shepherd
(tm/executor/launcher.py: zygote_implementation).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "tm.executor._shepherd",
            sources=["tm/executor/_shepherd.c", "tm/executor/_shepherd_job.c"],
            depends=["tm/executor/_shepherd.h"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
