"""No module of ``tm/`` grows past about 500 lines: a bigger one is split by responsibility
(as ``tm/executor/runner.py`` into ``request.py`` and ``lastresort.py``, and
``tm/textcommands.py`` into ``textformat.py``), its old names re-exported."""

from __future__ import annotations

from pathlib import Path

TM = Path(__file__).resolve().parents[2] / "tm"
MAX_LINES = 500


def test_no_module_in_tm_is_over_500_lines() -> None:
    sizes = {
        str(path.relative_to(TM.parent)): len(path.read_text().splitlines())
        for path in TM.rglob("*.py")
    }
    assert len(sizes) > 20
    too_big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_big, (
        f"split these modules by responsibility (at most {MAX_LINES} lines): {too_big}"
    )
