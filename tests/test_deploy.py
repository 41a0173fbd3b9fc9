"""deploy/: the systemd unit (verify, security), sysusers/tmpfiles, the Prometheus alert rules.

The tools come from Debian: `systemd` (systemd-analyze, systemd-sysusers, systemd-tmpfiles) and
`prometheus` (promtool); `scripts/test` installs them. A missing tool FAILS these tests, with
the package to install: a skipped test would hide an unchecked deliverable.

What is and is not tested: `systemd-analyze verify` checks the unit's syntax, every key and
that `ExecStart` is executable — on a copy whose `ExecStart` points at this checkout's
`rorfeed` (the shipped `/opt/rorfeed/bin/rorfeed` does not exist here); nothing else differs.
`systemd-analyze security --offline=true` rates the shipped file itself. The unit is not
started (no running systemd here): `MemoryDenyWriteExecute=` is checked instead by running a
whole cycle (PostgreSQL source with a password, SFTP with an encrypted key) under the kernel's
equivalent, `PR_SET_MDWE`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rorfeed.daemon import STOP_GRACE_SECONDS
from tests.pg import PgServer
from tests.sites import mapping_csv, write_site
from tests.sshd import Sshd

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
PROMETHEUS = ROOT / "deploy" / "prometheus"
UNIT = SYSTEMD / "rorfeed.service"
SHIPPED_EXEC = "/opt/rorfeed/bin/rorfeed"
MAX_EXPOSURE = 2.0  # the issue asks for "OK" (≤ 3.0) and aims at ≤ 2.0


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found: install the Debian package `{package}` "
            "(scripts/test does it when missing)",
            pytrace=False,
        )
    return path


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    rorfeed = Path(sys.executable).parent / "rorfeed"
    assert rorfeed.is_file(), "the checkout's console script (pip install -e .) is missing"
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(SHIPPED_EXEC) == 1
    copy = tmp_path / "rorfeed.service"
    copy.write_text(text.replace(SHIPPED_EXEC, str(rorfeed)), encoding="utf-8")
    done = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 on unknown keys: its stderr is the verdict.
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr


def test_unit_security_exposure_is_ok(capsys: pytest.CaptureFixture[str]) -> None:
    analyze = tool("systemd-analyze", "systemd")
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    m = re.search(r"Overall exposure level for rorfeed\.service: (\d+\.\d+) (\w+)", done.stdout)
    assert m, done.stdout + done.stderr
    score = float(m.group(1))
    with capsys.disabled():
        print(f"\nsystemd-analyze security rorfeed.service: exposure {score} {m.group(2)}")
    assert score <= MAX_EXPOSURE, done.stdout


def test_unit_has_the_settings_the_daemon_relies_on() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert int(s["WatchdogSec"][0]) >= 30
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["2"]  # an invalid config is not restarted
    assert int(s["TimeoutStopSec"][0]) >= max(70, STOP_GRACE_SECONDS + 10)
    assert s["User"] == s["Group"] == ["rorfeed"]
    assert s["StateDirectory"] == s["ConfigurationDirectory"] == ["rorfeed"]
    assert s["LoadCredential"] == [
        "rorfeed:/etc/rorfeed/credentials",
        "rorfeed-web:/etc/rorfeed/web-credentials",
    ]
    assert s["ExecStart"] == [f"{SHIPPED_EXEC} --config /etc/rorfeed/rorfeed.toml serve"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert s[key] in (["strict"], ["yes"]), key
    assert s["CapabilityBoundingSet"] == [""]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "@system-service" in s["SystemCallFilter"]


def test_sysusers_and_tmpfiles_create_the_user_and_folders(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers", "systemd")
    tmpfiles = tool("systemd-tmpfiles", "systemd")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --root needs root to set owners (CI runs as root)")
    (tmp_path / "etc").mkdir()
    done = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSTEMD / "rorfeed.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("rorfeed:"))
    _, _, uid, gid, _, home, shell = entry.split(":")
    assert home == "/var/lib/rorfeed" and shell == "/usr/sbin/nologin"
    assert 0 < int(uid) < 1000  # a system user
    done = subprocess.run(
        [tmpfiles, f"--root={tmp_path}", "--create", str(SYSTEMD / "rorfeed.tmpfiles.conf")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    etc = (tmp_path / "etc" / "rorfeed").stat()
    assert (etc.st_mode & 0o777, etc.st_uid, etc.st_gid) == (0o750, 0, int(gid))
    creds = (tmp_path / "etc" / "rorfeed" / "credentials").stat()
    assert (creds.st_mode & 0o777, creds.st_uid, creds.st_gid) == (0o700, 0, 0)
    web_creds = (tmp_path / "etc" / "rorfeed" / "web-credentials").stat()
    assert (web_creds.st_mode & 0o777, web_creds.st_uid, web_creds.st_gid) == (0o700, 0, 0)


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    promtool = tool("promtool", "prometheus")
    check = subprocess.run(
        [promtool, "check", "rules", "rorfeed-alerts.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    tests = subprocess.run(
        [promtool, "test", "rules", "rorfeed-alerts.test.yml"],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "SUCCESS" in tests.stdout


# ---------------------------------------------------------------------------------------------
# MemoryDenyWriteExecute=yes: a whole cycle under the kernel's W^X enforcement

# prctl(PR_SET_MDWE = 65, PR_MDWE_REFUSE_EXEC_GAIN = 1): no new writable+executable memory.
QUERY = (
    "SELECT code_uf AS unit, nb_inst AS installed, nb_ferm AS closed, nb_dispo AS available"
    " FROM v_lits"
)

MDWE_RUN = """
import ctypes, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_MDWE) failed: errno {ctypes.get_errno()}")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X memory still allowed: MDWE not in force")
except OSError:
    pass
from rorfeed.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _mdwe_supported() -> bool:
    # Try in a child: the setting cannot be undone in this process.
    done = subprocess.run(
        [sys.executable, "-c", "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(65,1,0,0,0))"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.returncode == 0


def test_a_whole_cycle_runs_without_writable_executable_memory(
    tmp_path: Path, pg_server: PgServer, sshd: Sshd
) -> None:
    if not _mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+): W^X cannot be checked here")
    url = pg_server.create_db("mdwe_beds")
    pg_server.create_role("mdwe_reader", "pg pass 1")
    pg_server.execute(
        "mdwe_beds",
        "CREATE TABLE v_lits (code_uf text, nb_inst int, nb_ferm int, nb_dispo int)",
        "INSERT INTO v_lits VALUES ('REA', 10, 1, 2), ('MED', 30, 0, 5)",
        "GRANT SELECT ON v_lits TO mdwe_reader",
    )
    (tmp_path / "db-password").write_text("pg pass 1\n")
    (tmp_path / "sftp-passphrase").write_text(sshd.passphrase + "\n")
    remote = sshd.remote_dir()
    destination = sshd.destination_toml(remote, private_key=sshd.ed25519_passphrase)
    destination = destination.replace(
        "timeout_seconds", 'passphrase_file = "sftp-passphrase"\ntimeout_seconds', 1
    )
    reader_url = url.replace("postgres@", "mdwe_reader@")
    write_site(
        tmp_path,
        mapping=mapping_csv([("REA", "52/100", "Réanimation"), ("MED", "52/200", "Médecine")]),
        source=f'kind = "sql"\nurl = "{reader_url}"\npassword_file = "db-password"\n'
        f'query = "{QUERY}"\n',
        destinations=destination,
    )
    done = subprocess.run(
        [sys.executable, "-c", MDWE_RUN, "--config", str(tmp_path / "rorfeed.toml"), "run-once"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.suffix for p in remote.iterdir()) == [".csv", ".json", ".xml"]
