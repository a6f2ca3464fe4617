"""Small Python programs the harness runs on a host with ``python3 -c``.

They are constants: the values they work on travel as further argv items
(one JSON argument), quoted with :func:`shlex.join` by the caller, so no
matrix value is ever part of program text.

:data:`WATCHDOG` is what ties a remote QEMU to the SSH session (its spec as
its one argument, or, for a standby started before it is needed, as the
first line on stdin): it starts the
command in a new session (its own process group) with a parent-death signal,
writes an owner file (marker, its own PID, the child's PID) and then waits
for either the child to exit or its stdin (the SSH channel) to reach EOF,
which happens when the harness closes the channel, the connection drops or
the harness dies.  On EOF it kills its process group by PID.  A line
``TERM`` on stdin sends SIGTERM first (a polite stop).  It reports on stdout
``pid N`` once started and ``exit S`` (``S`` as subprocess gives it,
negative for a signal) at the end.

:data:`AGENT` serves the harness's other commands on one channel.

:data:`SWEEP` kills leftovers of earlier runs by owner file: a child whose
watchdog is gone, whose PID still runs and whose environment still carries
the owner marker (so a recycled PID is never hit).  Never by name.
"""
from __future__ import annotations

WATCHDOG = r'''
import ctypes, json, os, select, signal, sys
if len(sys.argv) > 1:
    spec = json.loads(sys.argv[1])
else:
    # A standby, started ahead of need: its spec comes as the first line on
    # stdin (read a byte at a time, so nothing after it is taken from the
    # control stream); EOF first: nothing to start.
    line = b""
    while not line.endswith(b"\n"):
        ch = os.read(0, 1)
        if not ch:
            sys.exit(0)
        line += ch
    spec = json.loads(line)
try:
    os.setsid()
except OSError:
    pass  # already a session leader (the shell exec'd us): our own group already
me = os.getpid()
env = dict(os.environ)
env.update(spec["env"])
env["MHARNESS_OWNER"] = spec["marker"]
libc = ctypes.CDLL(None, use_errno=True)
child = os.fork()
if child == 0:
    try:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != me:
            os._exit(127)
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.dup2(2, 1)
        os.execvpe(spec["argv"][0], spec["argv"], env)
    except BaseException as exc:
        os.write(2, ("cannot start %s: %s\n" % (spec["argv"][0], exc)).encode())
    os._exit(127)
owners = spec["owners"]
os.makedirs(owners, mode=0o700, exist_ok=True)
own = os.path.join(owners, "%d.owner" % child)
with open(own, "w") as f:
    json.dump({"marker": spec["marker"], "watchdog": me, "pid": child}, f)
sys.stdout.write("pid %d\n" % child)
sys.stdout.flush()
pidfd = os.pidfd_open(child)
status = None
buf = b""
while status is None:
    ready, _, _ = select.select([0, pidfd], [], [])
    if pidfd in ready:
        status = os.waitpid(child, 0)[1]
        break
    data = os.read(0, 4096)
    if not data:
        break
    buf += data
    if b"TERM\n" in buf:
        buf = b""
        os.kill(child, signal.SIGTERM)
if status is None:
    os.kill(child, signal.SIGKILL)
    status = os.waitpid(child, 0)[1]
try:
    os.unlink(own)
except OSError:
    pass
code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
sys.stdout.write("exit %d\n" % code)
sys.stdout.flush()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGTERM)
'''

#: One long-lived helper per SSH connection (a small pool when calls overlap:
#: harness.hosts.ssh._Agent): it reads one JSON request a line on stdin and
#: answers one JSON line on stdout, so a command costs a round trip on an open
#: channel instead of a new exec channel, a shell and, for the programs here,
#: a Python start-up each (issue #14's per-cell overhead).  Requests:
#: ``{"op": "run", "argv": [...], "input": b64, "timeout": s}``: the argv run
#: directly (no shell), stdin from ``input`` or /dev/null, never the protocol;
#: ``{"op": "py", "program": text, "args": [...]}``: one of the programs of
#: this module, run in a fresh namespace with ``sys.argv`` set and its stdout
#: captured.  Replies carry ``code``, base64 ``out`` and ``err``, or
#: ``timeout``.  It ends at EOF on stdin: the harness closed the channel, the
#: connection dropped or the harness died.
AGENT = r'''
import base64, io, json, os, subprocess, sys, traceback
proto_in = open(os.dup(0), "rb")
proto_out = open(os.dup(1), "wb", buffering=0)
devnull = os.open(os.devnull, os.O_RDWR)
os.dup2(devnull, 0)
os.dup2(2, 1)
b64 = lambda b: base64.b64encode(b).decode()
while True:
    line = proto_in.readline()
    if not line:
        break
    req = json.loads(line)
    rep = {}
    try:
        if req["op"] == "run":
            data = base64.b64decode(req.get("input") or "")
            try:
                p = subprocess.run(req["argv"], input=data if data else None,
                                   stdin=None if data else subprocess.DEVNULL,
                                   capture_output=True, timeout=req.get("timeout"))
                rep = {"code": p.returncode, "out": b64(p.stdout), "err": b64(p.stderr)}
            except subprocess.TimeoutExpired:
                rep = {"timeout": True}
            except OSError as exc:
                rep = {"code": 127, "out": "", "err": b64(("%s: %s\n" % (req["argv"][0], exc)).encode())}
        else:
            saved_out, saved_argv = sys.stdout, sys.argv
            buf = io.BytesIO()
            wrapper = io.TextIOWrapper(buf, encoding="utf-8", write_through=True)
            sys.stdout, sys.argv = wrapper, ["-c"] + list(req.get("args", []))
            code = 0
            err = b""
            try:
                exec(compile(req["program"], "<harness>", "exec"), {"__name__": "__main__"})
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                code, err = 1, traceback.format_exc().encode()
            finally:
                wrapper.flush()
                sys.stdout, sys.argv = saved_out, saved_argv
            rep = {"code": code, "out": b64(buf.getvalue()), "err": b64(err)}
            wrapper.detach()
    except Exception:
        rep = {"code": 1, "out": "", "err": b64(traceback.format_exc().encode())}
    proto_out.write((json.dumps(rep) + "\n").encode())
'''

SWEEP = r'''
import json, os, signal, sys
owners = sys.argv[1]
killed = []
try:
    names = os.listdir(owners)
except FileNotFoundError:
    names = []
for name in names:
    path = os.path.join(owners, name)
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        continue
    try:
        os.kill(rec["watchdog"], 0)
        # A killed watchdog its parent has not reaped yet is a zombie: gone.
        with open("/proc/%d/stat" % rec["watchdog"]) as f:
            if f.read().rsplit(")", 1)[-1].split()[0] != "Z":
                continue
    except (ProcessLookupError, FileNotFoundError):
        pass
    except PermissionError:
        continue
    try:
        with open("/proc/%d/environ" % rec["pid"], "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        env = []
    if ("MHARNESS_OWNER=" + rec["marker"]).encode() in env:
        os.kill(rec["pid"], signal.SIGKILL)
        killed.append(rec["pid"])
    os.unlink(path)
print(json.dumps(killed))
'''

CHUNK_HASHES = r'''
import hashlib, json, sys
path, chunk = sys.argv[1], int(sys.argv[2])
# Optional mask: the first byte of each 4 KiB page in [start, end) hashed as
# zero (bytes a running guest rewrote: judged by the guest invariant instead).
start, end = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (0, 0)
out = []
offset = 0
with open(path, "rb") as f:
    while True:
        data = f.read(chunk)
        if not data:
            break
        if start < end and offset < end and offset + len(data) > start:
            data = bytearray(data)
            first = max(start, offset) - offset
            first += (start - (offset + first)) % 4096
            for i in range(first, min(end - offset, len(data)), 4096):
                data[i] = 0
        out.append(hashlib.sha256(data).hexdigest())
        offset += len(data)
print(json.dumps(out))
'''

STRIDED = r'''
import sys
path, offset, count, stride = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = bytearray(count)
with open(path, "rb") as f:
    for i in range(count):
        f.seek(offset + i * stride)
        out[i:i + 1] = f.read(1) or b"\0"
sys.stdout.buffer.write(bytes(out))
'''

FACTS = r'''
import json, os, time
facts = {"time": time.time()}
try:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                facts["mem_available"] = int(line.split()[1]) * 1024
except OSError:
    pass
try:
    os.close(os.open("/dev/kvm", os.O_RDWR))
    facts["kvm"] = None
except OSError as exc:
    facts["kvm"] = "/dev/kvm: " + exc.strerror
print(json.dumps(facts))
'''
