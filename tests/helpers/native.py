"""The compiled zygote and shepherd (``tm/executor/_shepherd*.c``) in this checkout.

``pip install .`` builds the extension into the installed package; the tests run this
checkout's sources (``PYTHONPATH``), so the session builds it here, next to the sources, when
it is missing or older than its source (:func:`build_in_tree`, from ``tests/conftest.py``):
the executors the tests start then use it, as an installed one would. The Python
implementation is tested explicitly (``launcher="zygote-python"``). Without a C compiler or
Python's headers the build fails; the tests of the compiled shepherd then skip, and fail in CI
(:func:`require_native`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "tm" / "executor"
# As setup.py lists them: the extension's, and the standalone zygote's.
SOURCES = [HERE / "_shepherd.c", HERE / "_zygote.c", HERE / "_shepherd_job.c"]
ZYGOTE_SOURCES = [HERE / "_zygote_main.c", HERE / "_zygote.c", HERE / "_shepherd_job.c"]
HEADER = HERE / "_shepherd.h"
TARGET = HERE / ("_shepherd" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
ZYGOTE = HERE / "_zygote"

#: Why the extension could not be built in this session, if it could not.
build_error: str | None = None


def build_in_tree() -> None:
    """Compile the extension and the standalone zygote next to their sources unless
    up-to-date builds are there already."""
    global build_error
    newest = max(path.stat().st_mtime for path in (*SOURCES, *ZYGOTE_SOURCES, HEADER))
    if all(t.exists() and t.stat().st_mtime >= newest for t in (TARGET, ZYGOTE)):
        return
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    include = sysconfig.get_paths()["include"]
    if cc is None or not Path(include, "Python.h").exists():
        build_error = f"no C compiler or no Python.h in {include}"
        return
    for target, flags, sources in (
        (TARGET, ["-shared", "-fPIC", f"-I{include}"], SOURCES),
        (ZYGOTE, [], ZYGOTE_SOURCES),
    ):
        partial = target.with_name(target.name + f".{os.getpid()}.tmp")
        argv = [cc, "-O2", "-Wall", *flags, "-o", str(partial), *map(str, sources)]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            build_error = f"{cc} failed: {done.stderr.strip()[-2000:]}"
            return
        os.replace(partial, target)  # atomic: a concurrent session sees the old or the new one


def require_native() -> None:
    """Skip (fail in CI) unless the compiled shepherd is built here."""
    from tests.helpers.requirements import skip_or_fail

    if not (TARGET.exists() and ZYGOTE.exists()):
        skip_or_fail(f"the compiled shepherd is not built ({build_error or 'not tried'})")


if __name__ == "__main__":
    build_in_tree()
    print(build_error or TARGET, file=sys.stderr if build_error else sys.stdout)
    sys.exit(1 if build_error else 0)
