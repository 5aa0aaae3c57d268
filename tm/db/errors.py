"""The errors of the store, independent of any protocol.

``tm.db`` knows nothing of AMP: whoever meets these errors at the edge (the dispatcher's
responders, its start, the admin CLI) turns them into its own answer; the text of each is
already the one line a user sees.  See :mod:`tm.dispatcher.storeerrors` for the mapping to
AMP errors.
"""

from __future__ import annotations


class StoreError(Exception):
    """Any refusal of the store that is not a bug; the text is one line for a user."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or written for now (lost connection, locked or full
    file, server shutting down, retries exhausted); the same request may succeed later, so a
    caller that can wait (the writer) tries it again."""


class StoreRefused(StoreError):
    """The request contradicts what is stored (e.g. a job uuid already used by another
    user's job); trying it again will not help: the text says what to change."""
