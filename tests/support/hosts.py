"""Hosts on one machine: Linux network namespaces joined by a bridge, for end-to-end tests and
benchmarks of a fleet across a real (if virtual) network.

Every host is a network namespace with one veth link to a bridge that lives in a namespace of
its own (the "switch"), never in the root namespace: nothing is routed to or from the machine's
own network, and two runs side by side (CI, several developers) cannot see each other. Each run
draws a random suffix that every name carries: namespaces ``pfn-SUFFIX-HOST``, links
``pfSUFFIX...`` (at most 11 characters; Linux allows 15), the run folder ``/tmp/pfn-SUFFIX`` and
the per-host ``/etc/netns/pfn-SUFFIX-HOST`` folder, whose ``hosts`` file ``ip netns exec``
mounts over ``/etc/hosts`` so that hosts reach each other by name. Addresses are taken from
``SUBNET``.0/24, assigned only inside the run's own namespaces.

Faults: ``partition`` (the host's port on the switch down) and ``heal``, ``slow`` (netem delay
and loss on both ends of the host's link, or, on a kernel without ``sch_netem``, the same done in
userspace by ``tests/support/impair.py``) and ``unslow``, ``kill_host`` (SIGKILL every process in
the host's namespace), ``crash`` (the same with the link cut first and the namespace deleted, so
that the kernel's socket state is lost as in a power cut and no peer hears of it) and ``boot``
(the namespace made again, with the same addresses, MAC included).

Cleanup: ``Net.down`` kills every process in the run's namespaces, deletes the namespaces (and
with them every link), the ``/etc/netns`` folders and the run folder; it runs from fixture
finalizers, from ``atexit`` and on SIGTERM. A run killed with SIGKILL leaves its things behind:
the next run removes those of any earlier run whose owning process is gone."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from tests.support import ROOT

PREFIX = "pfn-"
SUBNET = "10.213.7"
NETNS_ETC = Path("/etc/netns")
NETNS_RUN = Path("/run/netns")


class HostsError(Exception):
    """Raised when the harness cannot build, change or remove its namespaces."""


def unavailable() -> str | None:
    """Why namespaced hosts cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs these tests as root)"
    for tool in ("ip", "tc", "unshare", "taskset", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    # Root in a container without CAP_SYS_ADMIN can list namespaces but not make them: try.
    probe = f"{PREFIX}probe-{secrets.token_hex(3)}"  # not a run's name: no sweep takes it
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip()}"
    try:
        veth = ip("link", "add", "pfprobe0", "type", "veth", "peer", "name", "pfprobe1",
                  ns=probe, check=False)
        if veth.returncode != 0:
            return f"cannot make veth links here: {veth.stderr.strip()}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if check and r.returncode != 0:
        raise HostsError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r


def netns_exec(ns: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=kwargs.pop("timeout", 60), check=False, **kwargs)


def base_env(**extra: str) -> dict:
    """A clean environment for processes on the hosts: this interpreter's bin folder first on
    PATH (the ``polyfit`` console script), nothing of the caller's ``POLYFIT_*``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYFIT_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


# -- processes in a namespace -------------------------------------------------------------------

def namespace_pids(ns: str) -> list[int]:
    r = ip("netns", "pids", ns, check=False)
    return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []


def kill_namespace(ns: str, timeout: float = 20.0) -> int:
    """SIGKILL every process in ``ns`` until none is left; returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while pids := namespace_pids(ns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        if time.monotonic() > deadline:
            raise HostsError(f"processes {pids} in {ns} survive SIGKILL")
        time.sleep(0.05)
    return len(killed)


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


# -- what a run leaves behind, and removing it --------------------------------------------------

def _run_dir(suffix: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{PREFIX}{suffix}"


def _names_of(suffix: str) -> list[str]:
    r = ip("netns", "list", check=False)
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{PREFIX}{suffix}-")]


def remove_run(suffix: str) -> list[str]:
    """Remove everything of run ``suffix``: its processes, namespaces (and with them its links),
    /etc/netns folders, PostgreSQL's shared memory and the run folder. Returns what could not
    be removed (empty when all went)."""
    problems: list[str] = []
    run_dir = _run_dir(suffix)
    names = _names_of(suffix)
    for ns in names:
        try:
            kill_namespace(ns)
        except HostsError as e:
            problems.append(str(e))
    for ns in names:
        r = ip("netns", "del", ns, check=False)
        if r.returncode != 0:
            problems.append(f"ip netns del {ns}: {r.stderr.strip()}")
    for folder in NETNS_ETC.glob(f"{PREFIX}{suffix}-*"):
        shutil.rmtree(folder, ignore_errors=True)
    remove_pg_shm(run_dir / "pg" / "data")
    shutil.rmtree(run_dir, ignore_errors=True)
    if run_dir.exists():
        problems.append(f"{run_dir} is still there")
    return problems


def remove_pg_shm(pgdata: Path) -> None:
    """A PostgreSQL killed with SIGKILL leaves its small System V segment behind (a clean stop
    removes it): remove it, once nothing is attached, if it is still the one its pid file
    names."""
    try:
        key, shm_id = (pgdata / "postmaster.pid").read_text().splitlines()[6].split()
        table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except (OSError, IndexError, ValueError):
        return
    for line in table:
        f = line.split()
        if f[1] == shm_id and int(f[0]) == int(key) and f[6] == "0":
            subprocess.run(["ipcrm", "-m", shm_id], capture_output=True, check=False)


def leftover_runs(started_before: float) -> list[str]:
    """Suffixes of earlier runs whose owning process is gone and whose things are older than
    ``started_before`` (a run being set up right now, by anyone, is never taken)."""
    found: dict[str, float] = {}
    pattern = re.compile(rf"^{re.escape(PREFIX)}([0-9a-f]{{6}})(-|$)")
    # A namespace's file in /run/netns tells nothing of its age (the kernel makes its inode
    # when it is looked at): a run is as old as its folders; namespaces without one, ancient.
    for path in NETNS_RUN.glob(f"{PREFIX}*"):
        if m := pattern.match(path.name):
            found.setdefault(m[1], 0.0)
    for path in [*NETNS_ETC.glob(f"{PREFIX}*"), *Path(tempfile.gettempdir()).glob(f"{PREFIX}*")]:
        if m := pattern.match(path.name):
            with contextlib.suppress(OSError):
                made = path.stat().st_mtime
                found[m[1]] = made if not found.get(m[1]) else min(found[m[1]], made)
    stale = []
    for suffix, made in found.items():
        if made >= started_before:
            continue
        owner = _run_dir(suffix) / "owner"
        try:
            pid, start = owner.read_text().split()
            if _start_time(int(pid)) == start:
                continue  # its owner still runs
        except (OSError, ValueError):
            if made > time.time() - 60:
                continue  # no owner yet: a run setting up
        stale.append(suffix)
    return stale


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a CI job cancelled) becomes KeyboardInterrupt, so that fixture finalizers and
    atexit handlers run; only where nobody has claimed SIGTERM already."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def _raise(_signum, _frame):
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, _raise)


# -- the network ---------------------------------------------------------------------------------

# Turns checksum offload off on the given links (and so segmentation offloads, which need it),
# and GRO: every frame on the wire is then a real, complete frame, which the userspace link
# impairment needs (and which is what a physical NIC puts on a cable anyway).
_OFFLOADS_OFF = r"""
import array, fcntl, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for name in sys.argv[1:]:
    for cmd in (0x17, 0x2c):  # ETHTOOL_STXCSUM, ETHTOOL_SGRO
        value = array.array("I", [cmd, 0])
        fcntl.ioctl(s, 0x8946, struct.pack("16sP", name.encode(), value.buffer_info()[0]))
"""


@dataclass(frozen=True)
class Host:
    name: str
    index: int
    ns: str
    addr: str
    link: str  # its end of the veth pair, in its own namespace
    port: str  # the other end, a port of the bridge in the switch namespace
    core: int | None  # the one core its worker runs on (worker hosts only)


class Net:
    """A services host, a scheduler host and ``workers`` worker hosts on one switch."""

    def __init__(self, workers: int = 3) -> None:
        self.suffix = secrets.token_hex(3)
        self.run_dir = _run_dir(self.suffix)
        self.logs = self.run_dir / "logs"
        self.switch = f"{PREFIX}{self.suffix}-switch"
        self.bridge = f"pf{self.suffix}br"
        cores = sorted(os.sched_getaffinity(0))
        names = ["services", "scheduler", *(f"worker{i}" for i in range(1, workers + 1))]
        self.hosts: dict[str, Host] = {}
        for i, name in enumerate(names):
            worker = name.startswith("worker")
            n = int(name[6:]) if worker else 0
            self.hosts[name] = Host(
                name=name, index=i, ns=f"{PREFIX}{self.suffix}-{name}",
                addr=f"{SUBNET}.{10 + n if worker else 2 + i}",
                link=f"pf{self.suffix}h{i}", port=f"pf{self.suffix}s{i}",
                core=cores[n % len(cores)] if worker else None)
        self.workers = [h for h in self.hosts if h.startswith("worker")]
        self.netem: bool | None = None  # whether the kernel has sch_netem (found at first use)
        self._procs: list[subprocess.Popen] = []
        self._impairers: dict[str, subprocess.Popen] = {}
        self._slowed: set[str] = set()
        self._up = False

    # -- building and removing ------------------------------------------------------------------

    def up(self) -> Net:
        started = time.time()
        for suffix in leftover_runs(started):
            remove_run(suffix)
        self.logs.mkdir(parents=True)
        self.run_dir.chmod(0o755)  # PostgreSQL runs as `postgres` below it
        (self.run_dir / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        self._up = True
        atexit.register(self.down)
        _interrupt_on_sigterm()
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        sw = self.switch
        ip("netns", "add", sw)
        ip("link", "set", "lo", "up", ns=sw)
        ip("link", "add", self.bridge, "type", "bridge", ns=sw)
        ip("link", "set", self.bridge, "up", ns=sw)
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{h.addr} {h.name}\n" for h in self.hosts.values())
        for h in self.hosts.values():
            etc = NETNS_ETC / h.ns
            etc.mkdir(parents=True)
            (etc / "hosts").write_text(hosts_file)
            # No name server: a name that is not in the hosts file fails at once, and no query
            # leaves the namespace (glibc then asks 127.0.0.1, where nothing listens).
            (etc / "resolv.conf").write_text("# hosts of the test network: see hosts\n")
        self._plug(*self.hosts.values())

    def _plug(self, *hosts: Host) -> None:
        """Make each host's namespace and plug it into the switch."""
        sw = self.switch
        for h in hosts:
            ip("netns", "add", h.ns)
            ip("link", "set", "lo", "up", ns=h.ns)
            # Fixed addresses, as a machine's NIC keeps its own across a reboot (``boot``): its
            # peers' ARP caches stay right.
            mac = f"02:{self.suffix[0:2]}:{self.suffix[2:4]}:{self.suffix[4:6]}"
            ip("link", "add", h.link, "address", f"{mac}:00:{h.index:02x}", "type", "veth",
               "peer", "name", h.port, "address", f"{mac}:01:{h.index:02x}", ns=sw)
        self._offloads_off(sw, [x for h in hosts for x in (h.link, h.port)])
        for h in hosts:
            ip("link", "set", h.link, "netns", h.ns, ns=sw)
            ip("link", "set", h.port, "master", self.bridge, "up", ns=sw)
            ip("addr", "add", f"{h.addr}/24", "dev", h.link, ns=h.ns)
            ip("link", "set", h.link, "up", ns=h.ns)

    def _offloads_off(self, ns: str, links: list[str]) -> None:
        r = netns_exec(ns, [sys.executable, "-c", _OFFLOADS_OFF, *links])
        if r.returncode != 0:
            raise HostsError(f"cannot turn offloads off on {links}: {r.stderr.strip()}")

    def down(self) -> None:
        """Remove everything of this run (idempotent); raises if something could not go."""
        if not self._up:
            return
        self._up = False
        problems = remove_run(self.suffix)
        for p in [*self._procs, *self._impairers.values()]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        if problems:
            raise HostsError("; ".join(problems))

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # -- processes -----------------------------------------------------------------------------

    def start(self, host: str, argv: list[str], *, log: str, env: dict | None = None,
              hostname: bool = False, pin: bool = False) -> subprocess.Popen:
        """Start ``argv`` on ``host`` in the background, output in ``logs/LOG.log``.
        ``hostname``: in a UTS namespace of its own named after the host (what a worker
        records in the ``worker`` column); ``pin``: on the host's one core."""
        h = self.hosts[host]
        prefix = ["unshare", "--uts", "--"] if hostname else []
        if pin and h.core is not None:
            prefix += ["taskset", "-c", str(h.core)]
        if hostname:
            argv = ["sh", "-c", f'hostname {h.name} && exec "$@"', "sh", *argv]
        with open(self.logs / f"{log}.log", "ab") as out:
            p = subprocess.Popen(["ip", "netns", "exec", h.ns, *prefix, *argv],
                                 env=env or base_env(), cwd=ROOT, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append(p)
        return p

    def run(self, host: str, argv: list[str], *, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``argv`` on ``host`` to the end; output captured as text."""
        return netns_exec(self.hosts[host].ns, argv, env=env or base_env(), cwd=ROOT,
                          timeout=timeout)

    def note(self, what: str) -> None:
        """One line in ``logs/faults.log``, timed like the workers' logs: the faults' timeline."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        with open(self.logs / "faults.log", "a") as out:
            out.write(f"[{stamp},{int(time.time() * 1000) % 1000:03d}] {what}\n")

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def keep_logs(self, dest: Path) -> None:
        """Copy the run's logs (processes', PostgreSQL's) to ``dest`` before they go."""
        dest.mkdir(parents=True, exist_ok=True)
        for path in [*self.logs.glob("*.log"), self.run_dir / "pg" / "log"]:
            if path.is_file():
                shutil.copy(path, dest / path.name)

    # -- faults ---------------------------------------------------------------------------------

    def partition(self, host: str) -> None:
        """Cut ``host`` off the network: its port on the switch goes down (frames are dropped
        silently, as with a pulled cable; no RST, no ICMP)."""
        ip("link", "set", self.hosts[host].port, "down", ns=self.switch)
        self.note(f"partition {host}")

    def heal(self, host: str) -> None:
        flags = ip("link", "show", self.hosts[host].port, ns=self.switch).stdout
        if "UP" not in flags.split("<", 1)[1].split(">", 1)[0].split(","):
            ip("link", "set", self.hosts[host].port, "up", ns=self.switch)
            self.note(f"heal {host}")

    def kill_host(self, host: str) -> int:
        """SIGKILL every process of ``host`` (the machine dies); returns how many there were."""
        n = kill_namespace(self.hosts[host].ns)
        if n:
            self.note(f"kill {host}: {n} processes")
        for p in self._procs:
            p.poll()
        return n

    def crash(self, host: str) -> None:
        """The machine dies: every process SIGKILLed and its namespace deleted, and with it
        the kernel's state (sockets still sending a FIN, say), as a power cut would. Its peers
        are told nothing. ``boot`` brings it back, with nothing running."""
        h = self.hosts[host]
        self.unslow(host)
        # The link first: the FIN and RST that the dying processes' sockets send go nowhere.
        ip("link", "set", h.port, "down", ns=self.switch)
        n = kill_namespace(h.ns)
        # Orphaned sockets (a FIN that nobody acknowledges) keep a deleted namespace, and its
        # link, alive for minutes: unplug it (both ends of the pair go), then forget it.
        ip("link", "del", h.port, ns=self.switch)
        ip("netns", "del", h.ns)
        self.note(f"crash {host}: {n} processes killed, its kernel state gone")

    def boot(self, host: str) -> None:
        self._plug(self.hosts[host])
        self.note(f"boot {host}")

    def slow(self, host: str, delay_ms: int = 100, loss_pct: float = 2.0) -> None:
        """Delay every frame to and from ``host`` by ``delay_ms`` and drop ``loss_pct`` % of
        them, in each direction: ``netem`` on both ends of its link, or the same in userspace
        (``tests/support/impair.py``) where the kernel has no ``sch_netem``."""
        h = self.hosts[host]
        if host in self._slowed:
            raise HostsError(f"{host} is slowed already")
        netem = ["root", "netem", "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%"]
        if self.netem is not False:
            r = netns_exec(h.ns, ["tc", "qdisc", "add", "dev", h.link, *netem])
            if r.returncode == 0:
                self.netem = True
                r = netns_exec(self.switch, ["tc", "qdisc", "add", "dev", h.port, *netem])
                if r.returncode != 0:
                    raise HostsError(f"netem on {h.port}: {r.stderr.strip()}")
                self._slowed.add(host)
                self.note(f"slow {host}: netem delay {delay_ms}ms loss {loss_pct}%")
                return
            if "unknown" not in r.stderr.lower():
                raise HostsError(f"netem on {h.link}: {r.stderr.strip()}")
            self.netem = False
        # Userspace: the host's port leaves the bridge; tests/support/impair.py copies frames
        # between it and a spare veth pair's end, whose other end takes its place on the bridge.
        a, b = f"pf{self.suffix}i{h.index}", f"pf{self.suffix}j{h.index}"
        sw = self.switch
        ip("link", "add", a, "type", "veth", "peer", "name", b, ns=sw)
        self._offloads_off(sw, [a, b])
        ip("link", "set", b, "master", self.bridge, "up", ns=sw)
        ip("link", "set", a, "up", ns=sw)
        ip("link", "set", h.port, "nomaster", ns=sw)
        with open(self.logs / f"impair-{host}.log", "ab") as err:
            p = subprocess.Popen(
                ["ip", "netns", "exec", sw, sys.executable, "-m", "tests.support.impair", h.port, a,
                 "--delay-ms", str(delay_ms), "--loss-pct", str(loss_pct)],
                cwd=ROOT, env=base_env(), stdout=subprocess.PIPE, stderr=err,
                start_new_session=True)
        self._impairers[host] = p
        self._slowed.add(host)
        if p.stdout.readline().strip() != b"ready":
            raise HostsError(f"the link impairment of {host} did not start: "
                             f"{self.log(f'impair-{host}')}")
        self.note(f"slow {host}: userspace delay {delay_ms}ms loss {loss_pct}%")

    def unslow(self, host: str) -> None:
        h = self.hosts[host]
        if host not in self._slowed:
            return
        self._slowed.discard(host)
        self.note(f"unslow {host}")
        if self.netem:
            netns_exec(h.ns, ["tc", "qdisc", "del", "dev", h.link, "root"])
            netns_exec(self.switch, ["tc", "qdisc", "del", "dev", h.port, "root"])
            return
        p = self._impairers.pop(host)
        p.kill()
        p.wait(10)
        ip("link", "del", f"pf{self.suffix}i{h.index}", ns=self.switch)
        ip("link", "set", h.port, "master", self.bridge, ns=self.switch)

    def restore(self) -> None:
        """Every host up, its link up and unimpaired (between tests)."""
        for host, h in self.hosts.items():
            if not (NETNS_RUN / h.ns).exists():
                self.boot(host)
            self.unslow(host)
            self.heal(host)
