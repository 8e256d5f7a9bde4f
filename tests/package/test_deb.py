"""The Debian package as plant IT installs it: `make deb`, lintian, `dpkg -i` on this machine, the installed
`cellgate` (check, init, run as the package's system user against the simulators and Mosquitto, demo), an upgrade
that keeps an edited conffile, then remove and purge leaving nothing behind.

One build serves the install tests (module fixture). The upgrade installs a second, real `make deb` of a copy of
the tree with a new changelog entry (a higher version) and a changed upstream `cellgate.env`; it starts in the
background once the first build is done, so it builds while lintian and the install tests run. The maintainer
scripts run as on a machine where systemd runs (`SystemdView`), and the tests check what they asked it. The
module purges the package at the end, also when a test fails. Needs root (dpkg -i) on a Debian-based system: CI
runs `make test` as root.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.gateway import DEMO_CONFIG, REPO_ROOT, retarget_demo_config
from tests.support.mosquitto import Mosquitto, Received, Subscriber
from tests.support.sim import free_port_run, free_tcp_port, parse_ready_line
from tests.support.systemd import systemd_analyze_unusable_reason, systemd_analyze_verify

pytestmark = [
    pytest.mark.package,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a .deb with dpkg -i: needs root"),
    pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg (a Debian-based system)"),
    pytest.mark.timeout(600),
]

PACKAGE = "cellgate"
VENV = Path("/opt/cellgate/venv")
CELLGATE = VENV / "bin" / "cellgate"
ETC = Path("/etc/cellgate")
STATE = Path("/var/lib/cellgate")
UNITS = Path("/lib/systemd/system")
# Every path the package or its maintainer scripts create; after a purge none may remain.
OWNED_PATHS = [
    Path("/opt/cellgate"), ETC, STATE, Path("/var/lib/private/cellgate"), Path("/usr/bin/cellgate"),
    UNITS / "cellgate.service", UNITS / "cellgate-simulators.service", UNITS / "cellgate.service.d",
]
EDITED_ENV = "# edited on site\nCELLGATE_GATEWAY__ID=edge-from-site\n"
UPGRADE_SUFFIX = "+upgrade1"
UPSTREAM_ENV_LINE = "# a line the next release added\n"


def run(*command: str | Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def installed_version() -> str | None:
    result = run("dpkg-query", "-W", "-f", "${Status} ${Version}", PACKAGE, check=False)
    if result.returncode != 0 or not result.stdout.startswith("install ok installed"):
        return None
    return result.stdout.split()[-1]


def purge() -> None:
    if run("dpkg-query", "-W", PACKAGE, check=False).returncode == 0:
        run("dpkg", "--purge", PACKAGE)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make deb` into a temporary directory (pip's cache is the user's, so a second run downloads nothing);
    gzip instead of xz only saves time."""
    out = tmp_path_factory.mktemp("deb")
    run("make", "-C", REPO_ROOT, "deb", f"DEB_DIR={out}", "DEB_COMPRESSION=gzip", timeout=900)
    debs = sorted(out.glob("cellgate_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def tree_copy(destination: Path) -> Path:
    """The repository's files as `make deb` sees them (tracked and untracked, not ignored), in a git work tree of
    their own, so that `make deb` runs there unchanged."""
    files = run("git", "-C", REPO_ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout
    destination.mkdir()
    subprocess.run(["tar", "--null", "--ignore-failed-read", "-T", "-", "-cf", destination / "tree.tar"],
                   cwd=REPO_ROOT, input=files, text=True, check=True, capture_output=True)
    tree = destination / "tree"
    tree.mkdir()
    run("tar", "-xf", destination / "tree.tar", "-C", tree)
    run("git", "init", "--quiet", tree)
    return tree


def prepend_changelog_entry(tree: Path, version: str, change: str) -> None:
    """A new top entry in debian/changelog: what `dch -v VERSION` writes for a release."""
    changelog = tree / "debian" / "changelog"
    stamp = email.utils.format_datetime(datetime.now(UTC).replace(microsecond=0)).replace("-0000", "+0000")
    entry = (f"cellgate ({version}) unstable; urgency=medium\n\n  * {change}\n\n"
             f" -- Cellgate maintainers <cellgate@example.com>  {stamp}\n\n")
    changelog.write_text(entry + changelog.read_text())


class Rebuild:
    """The second `make deb` (the upgrade), running in the background from a changed copy of the tree."""

    def __init__(self, workdir: Path, version: str) -> None:
        self.version = version
        self.out = workdir / "deb"
        tree = tree_copy(workdir / "src")
        env_file = tree / "gateway" / "data" / "cellgate.env"
        self.upstream_env = env_file.read_text() + UPSTREAM_ENV_LINE
        env_file.write_text(self.upstream_env)
        prepend_changelog_entry(tree, version, "Rebuilt by tests/package: cellgate.env changed upstream.")
        self.log = workdir / "make-deb.log"
        with self.log.open("w") as log:
            self._make = subprocess.Popen(
                # Uncompressed: it is installed, never copied or linted, and compressing costs time.
                ["make", "-C", str(tree), "deb", f"DEB_DIR={self.out}", "DEB_COMPRESSION=none"],
                stdout=log, stderr=subprocess.STDOUT,
            )

    def wait(self) -> Path:
        returncode = self._make.wait(timeout=900)
        assert returncode == 0, self.log.read_text()[-3000:]
        debs = sorted(self.out.glob("cellgate_*.deb"))
        assert len(debs) == 1, debs
        return debs[0]

    def stop(self) -> None:
        if self._make.poll() is None:
            self._make.terminate()
            try:
                self._make.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._make.kill()
                self._make.wait()


@pytest.fixture(scope="module")
def rebuild(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rebuild]:
    """Started once the first build exists (pip's cache is warm then); the upgrade test waits for it."""
    version = run("dpkg-deb", "-f", deb, "Version").stdout.strip() + UPGRADE_SUFFIX
    started = Rebuild(tmp_path_factory.mktemp("rebuild"), version)
    try:
        yield started
    finally:
        started.stop()


FAKE_SYSTEMCTL = """#!/bin/sh
# Records what the maintainer scripts ask systemd; units listed in ENABLED are enabled, none is active.
echo "$*" >> LOG
for unit; do :; done
case " $* " in
    *" is-enabled "*)
        if grep -qx -- "$unit" ENABLED 2>/dev/null; then echo enabled; exit 0; fi
        echo disabled; exit 1 ;;
    *" is-active "*) exit 3 ;;
esac
exit 0
"""


class SystemdView:
    """dpkg run as on a machine where systemd runs, without touching this machine's services: in a private mount
    namespace (`unshare --mount`) /run/systemd/system exists, so the scripts debhelper generated act, and
    `systemctl` on PATH is a recorder that says the units in `enabled` are enabled. A policy-rc.d that forbids
    every start (container images install one) is masked there by one that allows, as on a plant machine."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "systemctl.log"
        self.enabled_file = workdir / "enabled"
        self.enabled_file.write_text("")
        self.bin = workdir / "bin"
        self.bin.mkdir()
        systemctl = self.bin / "systemctl"
        systemctl.write_text(FAKE_SYSTEMCTL.replace("LOG", str(self.log)).replace("ENABLED", str(self.enabled_file)))
        systemctl.chmod(0o755)
        self.allow = workdir / "policy-rc.d"
        self.allow.write_text("#!/bin/sh\nexit 0\n")
        self.allow.chmod(0o755)
        probe = run("unshare", "--mount", "--propagation", "private", "true", check=False)
        self.unavailable = None if probe.returncode == 0 else f"unshare --mount fails: {probe.stderr.strip()}"

    def enable(self, *units: str) -> None:
        self.enabled_file.write_text("".join(f"{unit}\n" for unit in units))

    def dpkg(self, *args: str | Path) -> list[list[str]]:
        """`dpkg ARGS`; the systemctl calls its maintainer scripts made, each split into words."""
        self.log.write_text("")
        if self.unavailable is not None:
            run("dpkg", *args)
            return []
        script = (
            "set -e; mkdir -p /run/systemd; mount -t tmpfs tmpfs /run/systemd; mkdir /run/systemd/system; "
            f"if [ -e /usr/sbin/policy-rc.d ]; then mount --bind {self.allow} /usr/sbin/policy-rc.d; fi; "
            f'PATH={self.bin}:$PATH; export PATH; exec dpkg "$@"'
        )
        run("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args)
        return [line.split() for line in self.log.read_text().splitlines()]


def acted_on(calls: list[list[str]], action: str) -> set[str]:
    """The units a systemctl ACTION (start, restart, stop, enable) was called for."""
    return {word for call in calls if action in call for word in call[call.index(action) + 1:]
            if word.endswith(".service")}


@pytest.fixture(scope="module")
def systemd(tmp_path_factory: pytest.TempPathFactory) -> SystemdView:
    return SystemdView(tmp_path_factory.mktemp("systemd"))


@pytest.fixture(scope="module")
def install_calls(deb: Path, rebuild: Rebuild, systemd: SystemdView) -> Iterator[list[list[str]]]:
    """The package installed (dpkg -i, systemd visible): what its scripts asked systemctl."""
    if installed_version() is not None:
        pytest.fail(f"{PACKAGE} is already installed on this machine; the test would replace it (dpkg --purge it)")
    purge()  # leftovers of an earlier, interrupted run (config-files state)
    try:
        yield systemd.dpkg("-i", deb)
    finally:
        purge()


@pytest.fixture(scope="module")
def installed(deb: Path, install_calls: list[list[str]]) -> Path:
    return deb


@pytest.fixture
def readable_dir() -> Iterator[Path]:
    """A temporary directory the package's system user can read (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="cellgate-package-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def process(*command: str | Path, log: Path) -> Iterator[subprocess.Popen[str]]:
    with log.open("w") as out:
        child = subprocess.Popen([str(part) for part in command], stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@contextlib.contextmanager
def installed_simulators(log: Path) -> Iterator[dict[str, int]]:
    """The installed `cellgate sim` on free ports; yields {"opcua": port, device: port, ...} from its ready line."""
    with process(CELLGATE, "sim", "--opcua-port", "0", "--modbus-port", "0", log=log) as child:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready = next(filter(None, map(parse_ready_line, log.read_text().splitlines())), None)
            if ready is not None:
                port = int(ready.opcua_endpoint.rstrip("/").rsplit(":", 1)[1])
                yield {"opcua": port, **ready.modbus_ports}
                return
            assert child.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"installed simulators not ready:\n{log.read_text()[-3000:]}")


def equipment_seen(messages: list[Received]) -> set[str]:
    """Equipment that published at least one tag value (topic .../{equipment}/{tag...}, not _status or _meta)."""
    seen = set()
    for message in messages:
        parts = message.topic.split("/")
        if len(parts) >= 6 and not parts[5].startswith("_"):
            seen.add(parts[4])
    return seen


EQUIPMENT = {"coater-01", "calender-01", "stacker-01", "rack-01", "rack-02"}


def test_lintian_finds_no_errors(deb: Path, rebuild: Rebuild) -> None:
    """(`rebuild` starts the upgrade's build here, so that it runs while lintian does.)"""
    result = run("lintian", "--fail-on", "error", deb, check=False, timeout=300)
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert result.returncode == 0 and not errors, result.stdout[-3000:] + result.stderr[-3000:]


def test_installs_the_venv_units_conffiles_and_a_system_user_without_starting_anything(installed: Path) -> None:
    assert installed.name == f"cellgate_{installed_version()}_{run('dpkg', '--print-architecture').stdout.strip()}.deb"
    assert Path("/usr/bin/cellgate").resolve() == CELLGATE.resolve()
    assert (VENV / "pyvenv.cfg").is_file()
    assert not (VENV / "bin" / "pip").exists()  # replaced by the next package, never changed in place
    site = next((VENV / "lib").glob("python3*/site-packages"))
    read_only = [*site.rglob("*.py"), *(path for path in site.glob("*.dist-info/*") if path.is_file())]
    executable = [str(path) for path in read_only if path.stat().st_mode & 0o111]
    assert not executable, executable[:5]  # modules and metadata are read, never run
    for unit in ("cellgate.service", "cellgate-simulators.service"):
        text = (UNITS / unit).read_text()
        assert f"ExecStart={CELLGATE} " in text
    assert "User=cellgate" in (UNITS / "cellgate.service.d" / "cellgate-package.conf").read_text()
    conffiles = run("dpkg-query", "-W", "-f", "${Conffiles}", PACKAGE).stdout.split()
    assert {str(ETC / "tagmap.yaml"), str(ETC / "cellgate.env")} <= set(conffiles)
    # the sqlite3 program salvages a damaged spool best (.recover); the gateway works without it
    assert run("dpkg-query", "-W", "-f", "${Recommends}", PACKAGE).stdout.strip() == "sqlite3"
    assert (ETC / "tagmap.yaml").read_text() == DEMO_CONFIG.read_text()
    assert (ETC / "cellgate.env").stat().st_mode & 0o777 == 0o600
    user = run("getent", "passwd", "cellgate").stdout.split(":")
    assert user[6].strip() in {"/usr/sbin/nologin", "/bin/false"} and int(user[2]) < 1000
    assert "dialout" in run("id", "-nG", "cellgate").stdout.split()
    assert STATE.is_dir() and STATE.owner() == "cellgate"
    # Not enabled, so not started on installation (and not after upgrades either until an administrator enables it).
    assert not list(Path("/etc/systemd/system").glob("*.wants/cellgate*.service"))


def test_installation_reloads_systemd_and_neither_enables_nor_starts_a_unit(
    install_calls: list[list[str]], systemd: SystemdView
) -> None:
    if systemd.unavailable is not None:
        pytest.skip(f"the maintainer scripts' systemctl calls cannot be observed here: {systemd.unavailable}")
    assert ["--system", "daemon-reload"] in install_calls, install_calls
    for action in ("enable", "start", "restart"):
        assert not acted_on(install_calls, action), (action, install_calls)


def test_installed_units_and_the_package_drop_in_pass_systemd_analyze_verify(installed: Path, tmp_path: Path) -> None:
    reason = systemd_analyze_unusable_reason(tmp_path)
    if reason is not None:
        pytest.skip(f"systemd-analyze verify cannot run in this environment: {reason}")
    units = [UNITS / "cellgate.service", UNITS / "cellgate-simulators.service"]
    result = systemd_analyze_verify(units)
    findings = [line for unit in units for line in result.lines_about(unit.name, unit)]
    findings += result.lines_about("cellgate-package.conf", UNITS / "cellgate.service.d" / "cellgate-package.conf")
    assert result.returncode == 0 and not findings, result.output


def test_installed_cellgate_check_validates_etc_tagmap(installed: Path) -> None:
    result = run("/usr/bin/cellgate", "check", "-c", ETC / "tagmap.yaml")
    for device in EQUIPMENT:
        assert device in result.stdout


def test_installed_gateway_runs_as_the_system_user_and_publishes_simulator_data(
    installed: Path, readable_dir: Path
) -> None:
    with installed_simulators(readable_dir / "sim.log") as ports, Mosquitto() as broker:
        config = readable_dir / "tagmap.yaml"
        assert (ETC / "tagmap.yaml").read_text() == DEMO_CONFIG.read_text()  # so retargeting DEMO_CONFIG is fair
        retarget_demo_config(
            opcua_port=ports["opcua"], modbus_port=ports["rack-01"], destination=config,
            modbus_ports={name: port for name, port in ports.items() if name != "opcua"},
        )
        config.chmod(0o644)
        with Subscriber(broker.host, broker.port, "acme/dunkirk/#") as subscriber, process(
            "setpriv", "--reuid=cellgate", "--regid=cellgate", "--init-groups",
            "env", f"CELLGATE_MQTT__URL={broker.url}",
            CELLGATE, "run", "-c", config, "--state-dir", STATE, "--log-format", "json",
            log=readable_dir / "gateway.log",
        ) as gateway:
            try:
                subscriber.wait_for_blocking(lambda messages: equipment_seen(messages) == EQUIPMENT, timeout_s=60)
            finally:
                log_text = (readable_dir / "gateway.log").read_text()
            assert gateway.poll() is None, log_text[-3000:]
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(timeout=30) == 0, log_text[-3000:]
    assert "Traceback" not in (readable_dir / "gateway.log").read_text()
    state_files = [path for path in STATE.rglob("*") if path.is_file()]
    assert state_files and all(path.owner() == "cellgate" for path in state_files)


def test_installed_demo_runs_from_the_package_data_and_names_the_missing_extra(
    installed: Path, readable_dir: Path
) -> None:
    # Without the demo extra (the package has none): one line naming it, exit status 2, no traceback.
    bare = run(CELLGATE, "demo", check=False, timeout=60)
    assert bare.returncode == 2, bare.stdout + bare.stderr
    assert bare.stderr.strip().count("\n") == 0 and "cellgate[demo]" in bare.stderr
    assert "Traceback" not in bare.stderr + bare.stdout
    # With a broker given and no view, neither extra module is needed: simulators + gateway from the package.
    config = retarget_demo_config(
        opcua_port=free_tcp_port(), modbus_port=free_port_run(3), destination=readable_dir / "demo.yaml"
    )
    with Mosquitto() as broker, Subscriber(broker.host, broker.port, "acme/dunkirk/#") as subscriber, process(
        CELLGATE, "demo", "-c", config, "--broker", broker.url, "--no-view", log=readable_dir / "demo.log"
    ) as demo:
        subscriber.wait_for_blocking(lambda messages: equipment_seen(messages) == EQUIPMENT, timeout_s=60)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0, (readable_dir / "demo.log").read_text()[-3000:]
    assert "Traceback" not in (readable_dir / "demo.log").read_text()


def test_installed_init_writes_examples_that_check_cleanly(installed: Path, readable_dir: Path) -> None:
    target = readable_dir / "site"
    run(CELLGATE, "init", target)
    assert sorted(path.name for path in target.iterdir()) == [
        "cellgate-simulators.service", "cellgate.env", "cellgate.service", "tagmap.yaml",
    ]
    assert (target / "cellgate.service").read_text() == (UNITS / "cellgate.service").read_text()
    run(CELLGATE, "check", "-c", target / "tagmap.yaml")
    again = run(CELLGATE, "init", target, check=False)
    assert again.returncode == 2 and "--force" in again.stderr


def test_upgrade_to_a_rebuilt_package_keeps_the_edited_conffile_then_remove_and_purge_leave_nothing(
    installed: Path, rebuild: Rebuild, systemd: SystemdView
) -> None:
    """Upgrade, remove, purge as dpkg does them on a machine with systemd, where an administrator enabled
    cellgate.service (not the simulators): the upgrade reloads systemd and restarts that unit only, the remove
    stops both units, the purge leaves nothing of the package behind."""
    old_version = installed_version()
    assert old_version is not None
    (ETC / "cellgate.env").write_text(EDITED_ENV)
    spool_marker = STATE / "kept-across-upgrade"
    spool_marker.write_text("state")
    new = rebuild.wait()
    assert new.name.startswith(f"cellgate_{old_version}{UPGRADE_SUFFIX}_"), new.name
    assert run("dpkg-deb", "-f", new, "Version").stdout.strip() == rebuild.version

    systemd.enable("cellgate.service")
    upgrade_calls = systemd.dpkg("-i", "--force-confdef", "--force-confold", new)
    assert installed_version() == rebuild.version
    assert (ETC / "cellgate.env").read_text() == EDITED_ENV
    assert (ETC / "cellgate.env.dpkg-dist").read_text() == rebuild.upstream_env
    assert (ETC / "tagmap.yaml").read_text() == DEMO_CONFIG.read_text()  # unedited: replaced without a question
    changelog = run("sh", "-c", "zcat /usr/share/doc/cellgate/changelog.gz | head -1").stdout
    assert rebuild.version in changelog  # the new build's files are the ones installed
    assert spool_marker.read_text() == "state"
    run(CELLGATE, "--version")  # the upgraded environment works (and writes byte code prerm must clean up)

    remove_calls = systemd.dpkg("--remove", PACKAGE)
    assert not Path("/opt/cellgate").exists() and not Path("/usr/bin/cellgate").exists()
    assert (ETC / "cellgate.env").read_text() == EDITED_ENV  # configuration and state survive a remove
    assert spool_marker.exists()

    systemd.dpkg("--purge", PACKAGE)
    left = [str(path) for path in OWNED_PATHS if path.exists() or path.is_symlink()]
    assert not left, left
    assert run("dpkg-query", "-W", PACKAGE, check=False).returncode != 0
    helper_state = Path("/var/lib/systemd/deb-systemd-helper-enabled")
    assert not list(helper_state.rglob("cellgate*"))  # rglob of a missing directory is empty

    if systemd.unavailable is not None:
        pytest.skip(f"the maintainer scripts' systemctl calls cannot be observed here: {systemd.unavailable}")
    assert ["--system", "daemon-reload"] in upgrade_calls, upgrade_calls
    assert acted_on(upgrade_calls, "restart") == {"cellgate.service"}, upgrade_calls
    assert not acted_on(upgrade_calls, "start"), upgrade_calls
    assert acted_on(remove_calls, "stop") == {"cellgate.service", "cellgate-simulators.service"}, remove_calls
    assert ["--system", "daemon-reload"] in remove_calls, remove_calls
