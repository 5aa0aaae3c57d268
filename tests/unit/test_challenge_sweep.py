"""Unused challenge files go (tm/dispatcher/challenges.py), on the real file system."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tm import auth
from tm.dispatcher import challenges


def test_the_sweep_removes_old_leftovers_and_keeps_live_and_young_entries(tmp_path: Path) -> None:
    directory = tmp_path / "challenge"
    auth.ensure_challenge_dir(directory)
    old = time.time() - 3600
    leftover = directory / "tmfs_0123456789abcdef0123456789abcdef"
    leftover.write_text("nonce")
    litter = directory / "anything a user left"
    litter.write_text("x")
    outside = tmp_path / "outside"
    outside.write_text("must stay")
    link = directory / "link"
    link.symlink_to(outside)
    empty = directory / "empty-dir"
    empty.mkdir()
    live = directory / "tmfs_live"
    live.write_text("n")
    young = directory / "tmfs_young"
    young.write_text("n")
    for entry in (leftover, litter, empty, live):
        os.utime(entry, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    removed = challenges.sweep(directory, frozenset({str(live)}))
    assert removed == 4
    assert sorted(p.name for p in directory.iterdir()) == ["tmfs_live", "tmfs_young"]
    assert outside.read_text() == "must stay"  # the link went, not what it pointed to


def test_the_book_keeps_what_is_handed_out_until_it_is_settled() -> None:
    book = challenges.ChallengeBook()
    book.issued("/c/tmfs_1")
    book.issued("/c/tmfs_2")
    book.settled("/c/tmfs_1")
    book.settled("/c/unknown")
    assert book.live == {"/c/tmfs_2"}
    assert challenges.remove("/nonexistent/tmfs_x") is False
