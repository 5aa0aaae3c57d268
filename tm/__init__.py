"""TaskManager: distributes and manages calculation jobs on Unix hosts without root."""

#: The version, in one place: pyproject.toml reads it from here (``[tool.setuptools.dynamic]``),
#: and every program's ``--version`` prints :data:`VERSION_LINE`.
__version__ = "0.1.0"
VERSION_LINE = f"TaskManager {__version__}"
