"""What the dispatcher needs of its peers' sessions and of its store, as typing Protocols.

The real ones are :class:`tm.dispatcher.session.Session` and :class:`tm.db.store.Store`;
the unit tests' stand-ins (tests/unit/dispatcher_fakes.py) have the same shape.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.protocols import amp

from tm.core.model import HistoryEntry, Job, JobEnvironment, JobSpec, JobState, Transition, User


class Caller(Protocol):
    """A link to a peer: a command called, its answer's Deferred."""

    def call(self, command: type[amp.Command], /, **kw: Any) -> Deferred: ...


class PeerSession(Protocol):
    """A TMS's or an executor's authenticated connection."""

    @property
    def proto(self) -> Caller: ...

    @property
    def last_heard(self) -> float: ...

    @property
    def peer_pid(self) -> int | None: ...

    @property
    def authenticated_at(self) -> float | None: ...

    def fence(self) -> None: ...  # replaced by a newer executor of the same user and host

    def drop(self) -> None: ...  # cut: it went silent


class DispatcherStore(Protocol):
    """The database, as the dispatcher uses it (every call a transaction)."""

    def upgrade(self) -> Coroutine[Any, Any, list[int]]: ...
    def submit_jobs(
        self, user: str, environment: JobEnvironment, specs: list[JobSpec], now: float
    ) -> Coroutine[Any, Any, list[int]]: ...
    def insert_jobs(
        self, user: str, environment: JobEnvironment, specs: list[JobSpec], now: float
    ) -> Coroutine[Any, Any, tuple[list[int], list[Job]]]: ...
    def apply_transitions(
        self, transitions: list[Transition], now: float
    ) -> Coroutine[Any, Any, list[bool]]: ...
    def load_active_jobs(self) -> Coroutine[Any, Any, list[Job]]: ...
    def get_jobs(self, job_ids: Sequence[int]) -> Coroutine[Any, Any, list[Job]]: ...
    def get_job(self, job_id: int) -> Coroutine[Any, Any, Job | None]: ...
    def get_history(
        self, job_id: int, limit: int = 200
    ) -> Coroutine[Any, Any, list[HistoryEntry]]: ...
    def get_environment(self, env_id: int) -> Coroutine[Any, Any, str]: ...
    def list_jobs(
        self,
        states: Sequence[JobState],
        user: str | None = None,
        group: str | None = None,
        text: str | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> Coroutine[Any, Any, list[Job]]: ...
    def count_by_state(
        self, user: str | None = None
    ) -> Coroutine[Any, Any, dict[JobState, int]]: ...
    def group_counts(
        self, user: str | None = None, group: str | None = None
    ) -> Coroutine[Any, Any, dict[str, dict[str, int]]]: ...
    def group_usage(
        self, user: str | None = None, group: str | None = None
    ) -> Coroutine[Any, Any, dict[str, dict[str, float | int]]]: ...
    def set_suspended(self, job_id: int, suspended: bool) -> Coroutine[Any, Any, None]: ...
    def delete_jobs(self, job_ids: Sequence[int]) -> Coroutine[Any, Any, int]: ...
    def get_setting(self, name: str) -> Coroutine[Any, Any, str | None]: ...
    def set_setting(self, name: str, value: str) -> Coroutine[Any, Any, None]: ...
    def load_hosts(self) -> Coroutine[Any, Any, dict[str, tuple[bool, bool]]]: ...
    def save_host(self, name: str, active: bool, retired: bool) -> Coroutine[Any, Any, None]: ...
    def sync_users(self, users: list[User]) -> Coroutine[Any, Any, None]: ...
    def load_users(self) -> Coroutine[Any, Any, dict[str, bool]]: ...
    def set_user_enabled(self, name: str, enabled: bool) -> Coroutine[Any, Any, bool]: ...
