"""Builds the compiled zygote and shepherd (tm/executor/_shepherd*.c, _zygote*.c); the rest of
the package's definition is in pyproject.toml.

Two products of the same C code: the extension ``tm.executor._shepherd`` (the zygote's loop
and the shepherds, run inside ``python zygote.py``) and, beside it, the standalone zygote
``tm/executor/_zygote`` (the same loop in a small executable: the executor starts it where it
is built, since a job's fork of it costs a fraction of a fork of an interpreter).

Both are optional: where they cannot be built (no C compiler, no Python headers), the package
installs without them and the executor uses the Python zygote and shepherd
(tm/executor/launcher.py: zygote_implementation).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ZYGOTE_SOURCES = [
    "tm/executor/_zygote_main.c",
    "tm/executor/_zygote.c",
    "tm/executor/_shepherd_job.c",
]


class BuildExtAndZygote(build_ext):
    """The extension, then the standalone zygote in the same directory."""

    def run(self):
        super().run()
        if not os.path.exists(self.get_ext_fullpath("tm.executor._shepherd")):
            return  # the extension could not be built: neither can this
        try:
            objects = self.compiler.compile(
                ZYGOTE_SOURCES,
                output_dir=os.path.join(self.build_temp, "zygote"),
                depends=["tm/executor/_shepherd.h"],
                extra_postargs=["-O2"],
            )
            self.compiler.link_executable(
                objects,
                "_zygote",
                output_dir=os.path.dirname(self.get_ext_fullpath("tm.executor._shepherd")),
            )
        except Exception as e:  # CompileError, LinkError: optional, as the extension
            print(f"warning: the standalone zygote (tm/executor/_zygote) was not built: {e}")


setup(
    cmdclass={"build_ext": BuildExtAndZygote},
    ext_modules=[
        Extension(
            "tm.executor._shepherd",
            sources=[
                "tm/executor/_shepherd.c",
                "tm/executor/_zygote.c",
                "tm/executor/_shepherd_job.c",
            ],
            depends=["tm/executor/_shepherd.h"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ],
)
