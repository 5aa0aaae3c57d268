"""The executor's check of a start order against its user's signature (tm/jobsign.py).

Before anything of a job starts, the order must carry the signature the user's TMS made over
what defines the job, by the key in ``~/.taskmanager/jobkey``, for this executor's user, not
longer ago than the limit; and its environment must open with that key. Otherwise the job is
refused: its start fails with a reason that starts with "signature mismatch" (the dispatcher
records it as the job's end, ``failed``) and a warning is logged here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from tm import jobsign
from tm.core import jobfields
from tm.executor.request import JobStartError

_CHECKED_ONLY = tuple(f.name for f in jobfields.CHECKED_FIELDS if f not in jobfields.RUN_FIELDS)


class SpecChecker:
    """Checks start orders for ``user`` with the user's key, read when first needed and again
    when an order names another key (the file was replaced)."""

    log = Logger()

    def __init__(
        self,
        user: str,
        clock: Any,
        max_age_days: float = jobsign.DEFAULT_MAX_AGE_DAYS,
        load: Callable[[], jobsign.JobKey] = jobsign.load_key,
    ) -> None:
        self.user = user
        self.clock = clock
        self.max_age = max_age_days * 86400.0
        self._load = load
        self._key: jobsign.JobKey | None = None
        #: The last environment opened: (key, sealed, its variables). The jobs of a submission
        #: share one sealed environment, and their orders come together: it is decrypted once.
        self._opened: tuple[jobsign.JobKey, str, dict[str, str]] | None = None

    def _current_key(self, signature: Any) -> jobsign.JobKey:
        key = self._key
        named = signature.split(".")[1:2] if isinstance(signature, str) else []
        if key is None or (named and named[0] != key.key_id):
            key = self._key = self._load()
        return key

    def order(self, job_id: int, attempt: int, fields: dict[str, Any]) -> dict[str, Any]:
        """The order as the runner takes it (the environment opened, the signature's fields
        taken out); :class:`JobStartError` with the refusal when it may not run."""
        try:
            return self._checked(fields)
        except JobStartError as e:
            self.log.warn(
                "refused job {job_id}.{attempt} of {user}: {reason}",
                job_id=job_id,
                attempt=attempt,
                user=fields.get("user"),
                reason=e.reason,
            )
            raise

    def _checked(self, fields: dict[str, Any]) -> dict[str, Any]:
        signature = fields.get("signature") or ""
        try:
            key = self._current_key(signature)
        except jobsign.JobKeyError as e:
            raise JobStartError(f"{jobsign.MISMATCH}: cannot check it: {e}") from None
        sealed = fields.get("env")
        if not isinstance(sealed, str):
            raise JobStartError(f"{jobsign.MISMATCH}: the job's environment is not sealed")
        try:
            signed_at = float(fields.get("signed_at") or 0.0)
            problem = key.check(
                fields,
                signature,
                signed_at,
                sealed,
                user=self.user,
                now=self.clock.seconds(),
                max_age=self.max_age,
            )
        except (KeyError, TypeError, ValueError) as e:
            problem = f"{jobsign.MISMATCH}: the order is incomplete ({e})"
        if problem is not None:
            raise JobStartError(problem)
        opened = self._opened
        if opened is not None and opened[0] is key and opened[1] == sealed:
            env = dict(opened[2])
        else:
            try:
                env = key.open(self.user, sealed)
            except ValueError as e:
                raise JobStartError(f"{jobsign.MISMATCH}: {e}") from None
            self._opened = (key, sealed, dict(env))
        order = {k: v for k, v in fields.items() if k not in _CHECKED_ONLY}
        order["env"] = env
        return order
