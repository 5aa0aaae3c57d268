"""twistd plugins of TaskManager: tmdispatcher, tmserver (TMS) and tmmenial (TMMS)."""

from twisted.application.service import ServiceMaker

tmdispatcher = ServiceMaker(
    "TaskManager dispatcher", "tm.tap.dispatcher", "The TaskManager dispatcher.", "tmdispatcher"
)
tmserver = ServiceMaker(
    "TaskManager user server", "tm.tap.userserver", "A user's TaskManager server (TMS).", "tmserver"
)
tmmenial = ServiceMaker(
    "TaskManager executor", "tm.tap.executor", "A user's executor on one host (TMMS).", "tmmenial"
)
