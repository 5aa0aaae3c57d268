"""The CLI's fast path: what it imports, the JSON protocol of the TMS's Unix socket on both
ends (a real socket pair, no processes), and that it speaks the vocabulary of
tm/protocol/commands.py."""

from __future__ import annotations

import ast
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from tm import localsocket, textcommands
from tm.cli import hrunjob
from tm.cli.common import command_named
from tm.cli.errors import blocking_call, run_now
from tm.core.model import JobSpec
from tm.jobsign import JobKey
from tm.protocol import commands, jobtable, records
from tm.userserver import callbacks, local, signing

REPO = Path(__file__).resolve().parents[2]
FAST_PATH_MODULES = [
    "tm.cli.hrunjob",
    "tm.cli.hconnect",
    "tm.cli.errors",
    "tm.textcommands",
    "tm.jobfile",
    "tm.localsocket",
    "tm.protocol.limits",
    "tm.cli.jobwatch",
    "tm.joboutput",
    "tm.textjson",
    "tm.cli.completion",
    "tm.cli.completion_scripts",
    "tm.cli.hrunjob_output",
]


def test_the_fast_path_imports_neither_twisted_nor_tls() -> None:
    code = (
        "import sys\n"
        f"for name in {FAST_PATH_MODULES!r}:\n"
        "    __import__(name)\n"
        "from tm.cli import hrunjob, hconnect\n"
        "hrunjob.build_parser().parse_args(['-q', 'true'])\n"
        "hconnect.prepare(['lswjobs'])\n"
        "hconnect.watching(hconnect.prepare(['wait:1-3'])[1], None, False).close()\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('twisted', 'OpenSSL', 'cryptography')))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


#: What the everyday commands do without: each costs their start milliseconds (dataclasses
#: imports inspect, ast, dis and tokenize; the model is a dozen dataclasses).
NOT_ON_THE_EVERYDAY_PATH = ("dataclasses", "inspect", "tm.core.model", "twisted", "OpenSSL")

#: A TMS on its Unix socket (tm/localsocket.py's frames), in the subprocess: each command's
#: answer by name, the last one repeated.
FAKE_TMS = """
import base64, contextlib, io, json, os, socket, struct, sys, threading
from tm import localsocket

T0 = 1_700_000_000.0
JOB = {"id": 7, "user": "me", "state": "finished", "attempt": 1, "slots": 1, "priority": 0,
       "host": "node1", "group": "g", "info": "", "command": "echo hi", "submitted_at": T0,
       "state_since": T0, "exit_code": 0, "signal": None, "reason": "", "suspended": False,
       "uuid": "u", "shell": "/bin/sh", "cwd": os.environ["HOME"], "stdout": "out.txt",
       "stderr": "", "logfile": "", "excluded_hosts": [], "estimated_time": None,
       "estimated_memory": None, "pid": 99, "started_at": T0, "ended_at": T0 + 1}
ANSWERS = {
    "SubmitJobs": lambda kw: {"job_ids": list(range(1, len(kw["jobs"]) + 1)), "warnings": []},
    "WaitJob": lambda kw: {"state": "finished", "exit_code": 0, "signal": None},
    "WaitJobs": lambda kw: {"counts": {"finished": 1}, "failed": []},
    "ListJobs": lambda kw: {"jobs": [JOB], "next_after_id": None},
    "GetJob": lambda kw: {"job": [JOB], "history": [], "wait_reason": ""},
}

def serve(server):
    while True:
        conn, _ = server.accept()
        with conn:
            data = b""
            while True:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
                while len(data) >= 4 and len(data) >= 4 + struct.unpack("!I", data[:4])[0]:
                    size = struct.unpack("!I", data[:4])[0]
                    request, data = json.loads(data[4 : 4 + size]), data[4 + size :]
                    answer = ANSWERS[request["command"]](request["arguments"])
                    conn.sendall(localsocket.frame({"id": request["id"], "answer": answer}))

os.makedirs(localsocket.user_dir(), mode=0o700, exist_ok=True)
with open(os.path.join(os.environ["HOME"], "out.txt"), "w") as f:
    f.write("the output\\n")
with open(os.path.join(os.environ["HOME"], "jobs.txt"), "w") as f:
    f.write("command::true\\ncommand::false\\tslots::2\\n")
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(localsocket.socket_path())
server.listen(8)
threading.Thread(target=serve, args=(server,), daemon=True).start()
"""


def test_the_everyday_commands_import_neither_dataclasses_nor_the_model(tmp_path: Path) -> None:
    """hRunJob -q CMD, -q -f FILE, --wait, --help and hConnect lswjobs, lsfjobs, lajob:ID,
    wait:ID, cat:ID, each run to its end through its TMS's socket (a scripted one), import
    none of NOT_ON_THE_EVERYDAY_PATH; nor, but for --help, shutil (tm/cli/helpformat.py)."""
    code = FAKE_TMS + (
        "from tm.cli import hconnect, hrunjob\n"
        "runs = [(hrunjob, ['-q', 'true']), (hrunjob, ['-q', '-f', 'jobs.txt']),\n"
        "        (hrunjob, ['--wait', 'echo', 'hi']),\n"
        "        (hconnect, ['lswjobs']), (hconnect, ['lsfjobs']), (hconnect, ['lajob:7']),\n"
        "        (hconnect, ['wait:7']), (hconnect, ['cat:7']), (hrunjob, ['--help'])]\n"
        "results = []\n"
        "for module, argv in runs:\n"
        "    if argv == ['--help']:  # the help alone asks for the terminal's width\n"
        "        before_help = sorted(m for m in ('shutil',) if m in sys.modules)\n"
        "    out = io.TextIOWrapper(io.BytesIO(), encoding='utf-8')\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            code = module.main_fast(argv)\n"
        "        except SystemExit as e:\n"
        "            code = e.code\n"
        "    out.flush()\n"
        "    results.append((argv, code, out.buffer.getvalue().decode()))\n"
        "sys.stdout.flush()\n"
        f"missing = sorted(m for m in sys.modules if m.split('.')[0] in {NOT_ON_THE_EVERYDAY_PATH!r}\n"
        f"                 or m in {NOT_ON_THE_EVERYDAY_PATH!r})\n"
        "print(json.dumps({'results': results, 'modules': missing, 'before_help': before_help}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path))
    env.pop("TM_TRACE", None)
    # -S: without site-packages' .pth files, which may import any of these themselves.
    result = subprocess.run(
        [sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    outputs = {" ".join(argv): (code, out) for argv, code, out in report["results"]}
    assert outputs["-q true"] == (0, "")
    assert outputs["-q -f jobs.txt"] == (0, "")
    assert outputs["--wait echo hi"] == (0, "Job [1] has been submitted to TaskDispatcher.\n")
    assert outputs["--help"][0] == 0 and "usage: hRunJob" in outputs["--help"][1]
    assert outputs["lswjobs"][0] == 0 and "echo hi" in outputs["lswjobs"][1]
    assert outputs["lajob:7"][0] == 0 and "out.txt" in outputs["lajob:7"][1]
    assert outputs["wait:7"][0] == 0
    assert outputs["cat:7"] == (0, "the output\n")
    assert outputs["lsfjobs"][0] == 0
    assert report["modules"] == []
    assert report["before_help"] == []  # shutil: argparse's formatter, for the width alone


#: What the commonest commands do without: argparse (with gettext and its parser), re, enum,
#: typing, socket (its IntEnums), json (re), collections and functools (imported by all of
#: those), each milliseconds of a start that is tens of milliseconds (tm/cli/hrunjob_args.py,
#: tm/localsocket.py).
NOT_ON_THE_COMMONEST_PATH = (
    "argparse",
    "re",
    "enum",
    "typing",
    "socket",
    "json",
    "collections",
    "functools",
    "gettext",
    "shutil",
)


def test_the_commonest_commands_import_neither_argparse_nor_re_nor_typing(tmp_path: Path) -> None:
    """hRunJob -q CMD, --wait, options and `--`; hConnect lswjobs, lsfjobs, lajob:ID, wait:ID,
    cat:ID and help, each a process of its own against a TMS's socket (a scripted one, in a
    process of its own: its json and threads are not the CLI's) import none of
    NOT_ON_THE_COMMONEST_PATH."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path))
    env.pop("TM_TRACE", None)
    server_code = FAKE_TMS + (
        "ANSWERS['ListJobs'] = lambda kw: {'jobs': [dict(JOB, state=kw['states'][0])],\n"
        "                                  'next_after_id': None}\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"  # until the test ends
    )
    server = subprocess.Popen(
        [sys.executable, "-c", server_code],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "ready\n"  # the pipe's end: the test's timeout
        runs = [
            ("hrunjob", ["-q", "true"], ""),
            (
                "hrunjob",
                ["--wait", "echo", "hi"],
                "Job [1] has been submitted to TaskDispatcher.\n",
            ),
            ("hrunjob", ["-q", "-c", "2", "-g", "g", "-t", "5", "--", "echo", "a b"], ""),
            ("hconnect", ["lswjobs"], None),
            ("hconnect", ["lsfjobs"], None),
            ("hconnect", ["lajob:7"], None),
            ("hconnect", ["wait:7"], None),
            ("hconnect", ["cat:7"], "the output\n"),
            ("hconnect", ["help"], None),
        ]
        for module, argv, expected in runs:
            code = (
                "import sys\n"
                f"from tm.cli import {module}\n"
                f"status = {module}.main_fast({argv!r})\n"
                "sys.stdout.flush()\n"
                f"print(status, sorted(m for m in {NOT_ON_THE_COMMONEST_PATH!r}\n"
                "                      if m in sys.modules), file=sys.stderr)\n"
            )
            # -S: without site-packages' .pth files, which may import any of these themselves.
            done = subprocess.run(
                [sys.executable, "-S", "-c", code],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, (argv, done.stderr)
            assert done.stderr.splitlines()[-1] == "0 []", (argv, done.stderr)
            if expected is not None:
                assert done.stdout == expected, argv
            else:
                assert done.stdout, argv
    finally:
        server.kill()
        server.wait()


def test_json_completion_and_version_stay_on_the_fast_path(tmp_path: Path) -> None:
    """--json (a listing's document), hRunJob's JSON of a submission, the completion scripts,
    the job ids for them (no TMS here: none, and none started) and --version import neither
    Twisted nor TLS."""
    code = (
        "import contextlib, io, json, sys\n"
        "from tm import textjson\n"
        "from tm.cli import completion, hadmindatabase, hconnect, hrunjob\n"
        "from tm.cli.errors import blocking_call, run_now\n"
        "args, command = hconnect.prepare(['--json', '-T', 'lswjobs'])\n"
        "row = {'id': 1, 'user': 'u', 'state': 'waiting', 'state_since': 0.0, 'group': '',\n"
        "       'info': '', 'command': 'x', 'host': ''}\n"
        "answer = {'jobs': [row], 'next_after_id': None}\n"
        "call = blocking_call(lambda name, **kw: answer)\n"
        "doc = json.loads(run_now(textjson.answer(command, call, args.json)))\n"
        "assert doc['jobs'][0]['host'] is None, doc\n"
        "assert doc['jobs'][0]['state_since'] == '1970-01-01T00:00:00Z', doc\n"
        "args, jobs = hrunjob.prepare(['--json', '--', 'echo', 'a b'])\n"
        "assert json.loads(hrunjob.submitted_text(args, jobs, [1]))['ids'] == [1]\n"
        "assert 'complete -F _tm_hconnect hConnect' in completion.script('bash')\n"
        "assert 'compdef _tm_hconnect hConnect' in completion.script('zsh')\n"
        "assert completion.job_ids() == []\n"
        "parsers = [hrunjob.build_parser(), hconnect.build_parser(), hadmindatabase.build_parser()]\n"
        "for parser in parsers:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "        parser.parse_args(['--version'])\n"
        "    assert out.getvalue() == 'TaskManager 0.1.0\\n', out.getvalue()\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('twisted', 'OpenSSL', 'cryptography')))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert not (tmp_path / ".taskmanager" / "tms.pid").exists()


def test_the_text_commands_name_commands_of_the_protocol() -> None:
    tree = ast.parse(Path(textcommands.__file__).read_text())
    names: set[str] = {
        str(node.args[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "call"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    assert "ListJobs" in names and len(names) > 10
    for name in names:
        assert command_named(name).commandName == name.encode()


def test_a_job_travels_as_the_protocol_s_record() -> None:
    spec = hrunjob.spec_from_options(
        vars(
            hrunjob.build_parser().parse_args(
                ["-c", "2", "-E", "a,b", "-t", "5", "-g", "g", "echo x"]
            )
        )
        | {"command": "echo x"}
    )
    assert hrunjob.spec_to_json(spec) == records.spec_to_amp(JobSpec(**spec.values()))


def test_run_now_runs_a_coroutine_whose_awaits_are_ready() -> None:
    calls: list[tuple[str, dict]] = []

    def call(name: str, **kw: Any) -> dict:
        calls.append((name, kw))
        return {"jobs": [], "next_after_id": None}

    out = run_now(textcommands.parse("lswjobs", "tms").run(blocking_call(call)))
    assert out == "no waiting jobs"
    assert calls == [
        (
            "ListJobs",
            {
                "states": ["waiting"],
                "scope": "mine",
                "after_id": 0,
                "limit": textcommands.PAGE_LIMIT,
            },
        )
    ]


def test_terminal_code() -> None:
    assert hrunjob.terminal_code({"state": "running"}) is None
    assert hrunjob.terminal_code({"state": "finished", "exit_code": 0, "signal": None}) == 0
    assert hrunjob.terminal_code({"state": "failed", "exit_code": 3, "signal": None}) == 3
    assert hrunjob.terminal_code({"state": "killed", "exit_code": None, "signal": 9}) == 137
    assert hrunjob.terminal_code({"state": "lost", "exit_code": None, "signal": None}) == 1


# --- the server's side, over a StringTransport -------------------------------------------


class FakeLink:
    """The TMS's link to the dispatcher: answers from a table, records what it forwards."""

    connected = True
    fatal = None
    last_error = ""

    class info:
        address = "td:1"

    def __init__(self, answers: dict[type, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[type, dict]] = []

    async def ready(self, timeout: float) -> None:
        return None

    async def call(self, command: type, **kw: Any) -> Any:
        if command not in self.answers:  # as a dispatcher that does not know the command
            raise amp.UnhandledCommand()
        self.calls.append((command, kw))
        answer = self.answers[command]
        if isinstance(answer, Exception):
            raise answer
        return answer(kw) if callable(answer) else answer


#: The user's job key (tm/jobsign.py).
KEY = JobKey(b"k" * 32)


class FakeServer:
    def __init__(self, link: FakeLink) -> None:
        self.link = link
        self.reactor = Clock()
        self.user = "me"
        self.public_host = "here"
        self.port = 1
        self.started_at = 0.0
        self.socket_path = Path("/nowhere/tms.sock")
        self.signer = signing.Signer(KEY, "me", self.reactor)
        self.callbacks = callbacks.Callbacks(self.reactor, link, Path("/nowhere/on-end"))

        class info:
            address = "td:1"

        self.info = info


class Peer:
    """A LocalClientProtocol on a StringTransport whose peer has ``uid``."""

    def __init__(self, link: FakeLink, uid: int, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(localsocket, "peer_credentials", lambda sock: (4242, uid, uid))
        self.proto = local.LocalClientProtocol(FakeServer(link))  # type: ignore[arg-type]
        self.transport = StringTransport()
        self.transport.getHandle = lambda: None  # type: ignore[attr-defined]
        self.proto.makeConnection(self.transport)

    def request(self, command: str, **arguments: Any) -> None:
        data = json.dumps({"id": 1, "command": command, "arguments": arguments}).encode()
        self.proto.dataReceived(struct.pack("!I", len(data)) + data)

    def answers(self) -> list[dict]:
        # A submission lets each chunk leave (a turn of the reactor) before making the next.
        clock = self.proto.server.reactor
        while any(c.getTime() <= clock.seconds() for c in clock.getDelayedCalls()):
            clock.advance(0)
        raw, out = self.transport.value(), []
        self.transport.clear()
        while raw:
            (size,) = struct.unpack_from("!I", raw)
            out.append(json.loads(raw[4 : 4 + size]))
            raw = raw[4 + size :]
        return out


def test_another_uid_is_refused_in_one_line_and_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.logger import ILogObserver, globalLogPublisher

    events: list[dict] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        peer = Peer(FakeLink({}), os.getuid() + 1, monkeypatch)
    finally:
        globalLogPublisher.removeObserver(observer)
    [answer] = peer.answers()
    assert answer["error"]["code"] == "PERMISSION_DENIED"
    assert peer.transport.disconnecting
    assert [e["uid"] for e in events if "refused a client" in e.get("log_format", "")] == [
        os.getuid() + 1
    ]
    peer.request("Ping")  # nothing is served to it
    assert peer.answers() == []


def test_requests_are_forwarded_and_errors_keep_their_code(monkeypatch: pytest.MonkeyPatch) -> None:
    link = FakeLink(
        {
            commands.GetJob: commands.UnknownJob("unknown job 5"),
            commands.ListJobs: {"jobs": [], "next_after_id": None},
        }
    )
    peer = Peer(link, os.getuid(), monkeypatch)
    peer.request("GetJob", job_id=5)
    assert peer.answers() == [
        {"id": 1, "error": {"code": "UNKNOWN_JOB", "message": "unknown job 5"}}
    ]
    peer.request("ListJobs", states=["waiting"], scope="mine", after_id=0, limit=100)
    assert peer.answers() == [{"id": 1, "answer": {"jobs": [], "next_after_id": None}}]
    # Decoded as AMP decodes them for its responders: the optional ones absent are None.
    assert link.calls[-1] == (
        commands.ListJobs,
        {
            "states": ["waiting"],
            "scope": "mine",
            "after_id": 0,
            "limit": 100,
            "user": None,
            "group": None,
            "text": None,
            "order": None,
        },
    )


def test_a_page_asked_as_json_is_passed_on_as_the_dispatcher_wrote_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = '[{"id":1,"command":"caf\\u00e9 \\"x\\"","exit_code":null,"run_time":1.5}]'
    link = FakeLink({commands.ListJobsJSON: {"jobs_json": text, "next_after_id": None}})
    peer = Peer(link, os.getuid(), monkeypatch)
    peer.request("ListJobs", states=["waiting"], scope="mine", after_id=0, limit=100)
    raw = peer.transport.value()
    assert text.encode() in raw  # as it came
    [answer] = peer.answers()
    assert answer == {"id": 1, "answer": {"jobs": json.loads(text), "next_after_id": None}}
    assert link.calls[-1][0] is commands.ListJobsJSON
    # A page that is not a list of objects is refused in one line, not passed on.
    for bad in ('[{"id":1}],"x":[2]', "{}", "[1]"):
        link.answers[commands.ListJobsJSON] = {"jobs_json": bad, "next_after_id": None}
        peer.request("ListJobs", states=["waiting"], scope="mine", after_id=0, limit=100)
        [answer] = peer.answers()
        assert answer["error"]["code"] == "SERVER_ERROR"
        assert "not a JSON list of objects" in answer["error"]["message"]


def test_the_next_page_of_a_listing_is_asked_for_while_the_client_reads_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pages = {0: ([1, 2], 2), 2: ([3, 4], 4), 4: ([5], None)}
    failures: list[int] = []

    def page(kw: dict) -> dict:
        if kw["after_id"] in failures:
            failures.remove(kw["after_id"])
            raise commands.DispatcherUnavailable("no answer from the dispatcher")
        ids, after = pages[kw["after_id"]]
        return {"jobs": [{"id": i} for i in ids], "next_after_id": after}

    link = FakeLink({commands.ListJobs: page, commands.Ping: {}})
    peer = Peer(link, os.getuid(), monkeypatch)

    def listing() -> list[int]:
        seen, after = [], 0
        while True:
            peer.request("ListJobs", states=["waiting"], scope="mine", after_id=after, limit=2)
            [answer] = peer.answers()
            seen += [j["id"] for j in answer["answer"]["jobs"]]
            after = answer["answer"]["next_after_id"]
            if after is None:
                return seen

    assert listing() == [1, 2, 3, 4, 5]
    # Each page was asked for once, the next one as soon as the one before was answered.
    assert [kw["after_id"] for _, kw in link.calls] == [0, 2, 4]
    # A page asked for ahead that failed is asked again when the client wants it.
    failures.append(2)
    link.calls.clear()
    assert listing() == [1, 2, 3, 4, 5]
    assert [kw["after_id"] for _, kw in link.calls] == [0, 2, 2, 4]
    # A page asked ahead with other arguments, or before another request, is not used.
    link.calls.clear()
    peer.request("ListJobs", states=["waiting"], scope="mine", after_id=0, limit=2)
    peer.answers()
    peer.request("ListJobs", states=["running"], scope="mine", after_id=2, limit=2)
    peer.answers()
    assert [(kw["states"], kw["after_id"]) for _, kw in link.calls] == [
        (["waiting"], 0),
        (["waiting"], 2),
        (["running"], 2),
        (["running"], 4),
    ]
    link.calls.clear()
    peer.request("Ping")
    peer.answers()
    peer.request("ListJobs", states=["running"], scope="mine", after_id=4, limit=2)
    peer.answers()
    assert [kw["after_id"] for _, kw in link.calls] == [4]


@pytest.mark.parametrize(
    "command, arguments, text",
    [
        ("GetJob", {"job_id": "five"}, "bad arguments for GetJob"),
        ("GetJob", {}, "bad arguments for GetJob"),
        ("GetJob", {"job_id": 1, "extra": 2}, "extra is not a valid argument"),
        ("Authenticate", {}, "'Authenticate' is not a command of the TMS"),
        ("RunJob", {}, "'RunJob' is not a command of the TMS"),
    ],
)
def test_bad_requests_get_one_line(
    monkeypatch: pytest.MonkeyPatch, command: str, arguments: dict, text: str
) -> None:
    link = FakeLink({commands.GetJob: {"job": [], "history": [], "wait_reason": ""}})
    peer = Peer(link, os.getuid(), monkeypatch)
    peer.request(command, **arguments)
    [answer] = peer.answers()
    assert answer["error"]["code"] == "INVALID_REQUEST"
    assert text in answer["error"]["message"] and "\n" not in answer["error"]["message"]
    assert link.calls == []


def test_a_large_submission_is_sent_in_chunks_of_one_amp_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = iter(range(1, 10_000))

    def stored(kw: dict) -> dict:
        return {"job_ids": [next(counter) for _ in kw["jobs"]], "warnings": ["w"]}

    link = FakeLink({commands.SubmitJobs: stored})
    peer = Peer(link, os.getuid(), monkeypatch)
    spec = hrunjob.spec_from_options(
        vars(hrunjob.build_parser().parse_args(["x"])) | {"command": "x" * 1000}
    )
    rows = [hrunjob.spec_to_json(spec) | {"uuid": f"u{i}"} for i in range(300)]
    peer.request("SubmitJobs", cwd="/", umask=0o22, env={"A": "b"}, jobs=rows)
    [answer] = peer.answers()
    assert answer["answer"] == {"job_ids": list(range(1, 301)), "warnings": ["w"]}
    assert len(link.calls) > 1
    assert [row["uuid"] for _, kw in link.calls for row in kw["jobs"]] == [
        f"u{i}" for i in range(300)
    ]
    for _, kw in link.calls:
        assert records.encoded_size(records.JOB_SPEC_FIELDS, kw["jobs"]) <= records.MAX_VALUE_BYTES
        # Signed by the TMS, the environment sealed: what the dispatcher stores, the executor
        # checks.
        assert kw["env"] == {} and KEY.open("me", kw["sealed_env"]) == {"A": "b"}
        for row in kw["jobs"]:
            values = row | {"user": "me", "cwd": "/", "umask": 0o22}
            assert (
                KEY.check(
                    values,
                    row["signature"],
                    row["signed_at"],
                    kw["sealed_env"],
                    user="me",
                    now=row["signed_at"],
                    max_age=60.0,
                )
                is None
            )


def test_a_large_submission_goes_as_tables_to_a_dispatcher_that_knows_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = iter(range(1, 10_000))

    def stored(kw: dict) -> dict:
        rows = jobtable.rows_of_table(kw["jobs_table"])  # as the dispatcher reads it
        return {"job_ids": [next(counter) for _ in rows], "warnings": []}

    link = FakeLink({commands.SubmitJobTable: stored, commands.SubmitJobs: stored})
    peer = Peer(link, os.getuid(), monkeypatch)
    spec = hrunjob.spec_from_options(
        vars(hrunjob.build_parser().parse_args(["x"])) | {"command": "x" * 1000}
    )
    rows = [
        hrunjob.spec_to_json(spec) | {"uuid": f"u{i}", "command": f"{i}" + "x" * 1000}
        for i in range(300)
    ]
    peer.request("SubmitJobs", cwd="/", umask=0o22, env={"A": "b"}, jobs=rows)
    [answer] = peer.answers()
    assert answer["answer"] == {"job_ids": list(range(1, 301)), "warnings": []}
    assert {command for command, _ in link.calls} == {commands.SubmitJobTable}
    assert len(link.calls) > 1
    sent = [row for _, kw in link.calls for row in jobtable.rows_of_table(kw["jobs_table"])]
    assert [row["uuid"] for row in sent] == [f"u{i}" for i in range(300)]
    for _, kw in link.calls:
        assert len(kw["jobs_table"].encode()) <= records.MAX_VALUE_BYTES
        assert kw["env"] == {} and KEY.open("me", kw["sealed_env"]) == {"A": "b"}
    for row in sent:  # each job signed, as the executor checks it
        values = row | {"user": "me", "cwd": "/", "umask": 0o22}
        assert (
            KEY.check(
                values,
                row["signature"],
                row["signed_at"],
                link.calls[0][1]["sealed_env"],
                user="me",
                now=row["signed_at"],
                max_age=60.0,
            )
            is None
        )


def test_a_dispatcher_without_tables_gets_rows_and_is_not_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = iter(range(1, 10_000))
    link = FakeLink(
        {commands.SubmitJobs: lambda kw: {"job_ids": [next(counter) for _ in kw["jobs"]]}}
    )
    tried: list[type] = []
    call = link.call

    async def recorded(command: type, **kw: Any) -> Any:
        tried.append(command)
        return await call(command, **kw)

    link.call = recorded  # type: ignore[method-assign]
    peer = Peer(link, os.getuid(), monkeypatch)
    spec = hrunjob.spec_from_options(
        vars(hrunjob.build_parser().parse_args(["x"])) | {"command": "x"}
    )
    for first in (0, 3):
        rows = [hrunjob.spec_to_json(spec) | {"uuid": f"u{first + i}"} for i in range(3)]
        peer.request("SubmitJobs", cwd="/", umask=0o22, env={}, jobs=rows)
        [answer] = peer.answers()
        assert answer["answer"]["job_ids"] == [first + 1, first + 2, first + 3]
    # The table once (UnhandledCommand), then rows only: the same UUIDs, each sent once.
    assert tried == [commands.SubmitJobTable, commands.SubmitJobs, commands.SubmitJobs]
    assert [row["uuid"] for _, kw in link.calls for row in kw["jobs"]] == [
        f"u{i}" for i in range(6)
    ]


def test_a_bad_job_is_refused_by_the_tms_naming_it_and_nothing_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    link = FakeLink({commands.SubmitJobTable: {"job_ids": [1]}})
    peer = Peer(link, os.getuid(), monkeypatch)
    spec = hrunjob.spec_from_options(
        vars(hrunjob.build_parser().parse_args(["x"])) | {"command": "x"}
    )
    rows = [hrunjob.spec_to_json(spec) | {"uuid": f"u{i}"} for i in range(3)]
    rows[2]["slots"] = "two"
    peer.request("SubmitJobs", cwd="/", umask=0o22, env={}, jobs=rows)
    [answer] = peer.answers()
    assert answer["error"]["message"].startswith("bad job: job 3: ")
    assert link.calls == []


# --- the client's side, against a scripted server on a real socket ------------------------


def serve_once(server: socket.socket, reply: Any) -> threading.Thread:
    def run() -> None:
        conn, _ = server.accept()
        with conn:
            size = struct.unpack("!I", conn.recv(4))[0]
            data = b""
            while len(data) < size:
                data += conn.recv(size - len(data))
            request = json.loads(data)
            if reply is not None:
                out = json.dumps(reply(request)).encode()
                conn.sendall(struct.pack("!I", len(out)) + out)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def listening(tmp_path: Path) -> Any:
    path = tmp_path / "tms.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(10)
    yield path, server
    server.close()


def test_the_client_reads_answers_and_errors(listening: Any) -> None:
    path, server = listening
    thread = serve_once(server, lambda r: {"id": r["id"], "answer": {"echo": r["arguments"]}})
    client = localsocket.LocalClient.connect(path)
    assert client.call("Ping", x=1) == {"echo": {"x": 1}}
    client.close()
    thread.join(10)
    thread = serve_once(
        server,
        lambda r: {"id": r["id"], "error": {"code": "UNKNOWN_JOB", "message": "unknown job 3"}},
    )
    client = localsocket.LocalClient.connect(path)
    with pytest.raises(localsocket.RemoteError) as e:
        client.call("GetJob", job_id=3)
    assert (e.value.code, str(e.value)) == ("UNKNOWN_JOB", "unknown job 3")
    client.close()
    thread.join(10)


def test_a_link_lost_before_the_answer_hands_the_jobs_over(listening: Any) -> None:
    path, server = listening
    thread = serve_once(server, None)  # reads the request, closes without answering
    client = localsocket.LocalClient.connect(path)
    spec = hrunjob.spec_from_options(
        vars(hrunjob.build_parser().parse_args(["x"])) | {"command": "x"}
    )
    with pytest.raises(hrunjob.HandOver):
        hrunjob.submit_local(client, [spec])
    client.close()
    thread.join(10)


def test_no_tms_on_the_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(localsocket.Unavailable):
        localsocket.LocalClient.connect(tmp_path / "none.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    with pytest.raises(localsocket.Unavailable):
        localsocket.LocalClient.connect(tmp_path / "dead.sock")
    assert local.stale(tmp_path / "dead.sock")
