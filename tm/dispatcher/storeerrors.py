"""The store's errors as AMP errors: the one place where ``tm.db`` meets the protocol.

:class:`~tm.db.errors.StoreUnavailable` becomes ``DatabaseUnavailable`` (the client may try
again later) and :class:`~tm.db.errors.StoreRefused` ``InvalidRequest`` (the request must
change); the text, the line a user sees, is kept as it is.  Every responder of a dispatcher
session goes through :func:`map_store_failure` (see ``SessionBase``).
"""

from __future__ import annotations

from twisted.python.failure import Failure

from tm.db.errors import StoreError, StoreRefused, StoreUnavailable
from tm.protocol import commands


def amp_error(error: StoreError) -> commands.TMError:
    """The AMP error that tells a client what ``error`` means for it, with the same text."""
    if isinstance(error, StoreRefused):
        return commands.InvalidRequest(str(error))
    if isinstance(error, StoreUnavailable):
        return commands.DatabaseUnavailable(str(error))
    return commands.ServerError(str(error))


def map_store_failure(failure: Failure) -> Failure:
    """``failure`` with a store error replaced by its AMP error; any other failure as it is."""
    if isinstance(failure.value, StoreError):
        return Failure(amp_error(failure.value))
    return failure
