"""`rorfeed check` against a real sshd (tests/sshd.py) and a CSV source: one line per check."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rorfeed.cli import main
from tests.sites import mapping_csv, site_toml, write_export, write_site
from tests.sshd import Sshd

pytestmark = pytest.mark.sshd

MAPPING = mapping_csv(
    [
        ("REA", "52/100", "Réanimation", "auto"),
        ("MED", "52/200", "Médecine", "auto"),
        ("", "52/500", "Palliatifs", "manual"),
    ]
)
EXPORT = [("REA", 10, 1, 2), ("MED", 30, 0, 5)]


def ssh_fingerprint(private_key: Path) -> str:
    """The SHA256 fingerprint as OpenSSH computes it (independent of our code)."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", f"{private_key}.pub"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()[1]


class Site:
    """The site of tests/sites.py delivering over SFTP to the test sshd, with MAPPING and
    EXPORT."""

    def __init__(self, root: Path, sshd: Sshd) -> None:
        self.root = root
        self.sshd = sshd
        self.remote = sshd.remote_dir()
        write_site(root, self.toml(), MAPPING, EXPORT)

    def toml(self, referential: str | None = None, **destination: object) -> str:
        remote = destination.pop("remote_dir", self.remote)
        block = self.sshd.destination_toml(remote, name="operator", **destination)  # type: ignore[arg-type]
        return site_toml(referential=referential, destinations=block)

    def configure(self, referential: str = "", **destination: object) -> None:
        """rorfeed.toml with the sftp destination's keys overridden and, given its text, a
        referential file."""
        name = None
        if referential:
            name = "referential.csv"
            (self.root / name).write_text(referential, encoding="utf-8")
        (self.root / "rorfeed.toml").write_text(self.toml(name, **destination), encoding="utf-8")

    def check(self, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
        """Run `rorfeed check`: (exit code, stdout lines, stderr)."""
        capsys.readouterr()
        code = main(["--config", str(self.root / "rorfeed.toml"), "check"])
        captured = capsys.readouterr()
        lines = captured.out.splitlines()
        # Every line of stdout is one check: a status, what was checked, the outcome.
        assert all(line[:5] in ("OK   ", "WARN ", "FAIL ") for line in lines), lines
        return code, lines, captured.err

    def server(self) -> list[str]:
        return sorted(p.name for p in self.remote.iterdir())


def only(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, (prefix, lines)
    return found[0]


@pytest.fixture
def site(tmp_path: Path, sshd: Sshd) -> Site:
    return Site(tmp_path, sshd)


def test_everything_ok_prints_one_ok_line_per_check_and_leaves_nothing_behind(
    site: Site, sshd: Sshd, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, err = site.check(capsys)
    assert code == 0, lines
    assert [line.split(":")[0] for line in lines] == [
        "OK   config",
        "OK   750712184 Hôpital Test",  # mapping
        "OK   750712184 Hôpital Test",  # source
        f'OK   destination "operator" (sftp {sshd.user}@127.0.0.1',
    ]
    assert "mapping: 3 fiches (2 auto, 1 manual)" in lines[1]
    assert "source: 2 rows, 2 units" in lines[2]
    destination = lines[3]
    assert f"host key ssh-ed25519 {ssh_fingerprint(sshd.host_ed25519)} verified" in destination
    assert f"authenticated as {sshd.user}" in destination
    assert f"{site.remote} writable" in destination
    assert "check passed (0 warnings)" in err
    # The probe was removed; nothing was sent; no state was created.
    assert site.server() == []
    assert not (site.root / "work").exists()


@pytest.mark.parametrize("changed", [False, True], ids=["unknown", "changed"])
def test_untrusted_host_key_fails_showing_the_offered_fingerprint(
    site: Site, sshd: Sshd, capsys: pytest.CaptureFixture[str], changed: bool
) -> None:
    known_hosts = site.root / "known_hosts"
    if changed:
        sshd.write_known_hosts(known_hosts, sshd.other_ed25519)
    else:
        known_hosts.write_text("", encoding="ascii")
    site.configure(known_hosts=known_hosts)
    code, lines, err = site.check(capsys)
    assert code == 1
    line = only(lines, "FAIL ")
    assert line.startswith('FAIL destination "operator" (sftp ')
    assert f"ssh-ed25519 {ssh_fingerprint(sshd.host_ed25519)}" in line
    assert ("HOST KEY CHANGED" if changed else "host key not trusted") in line
    assert f"{sshd.name()} ssh-ed25519 " in line  # the line to add once compared
    assert "check failed: 1 problem, 0 warnings" in err
    assert site.server() == []


def test_wrong_client_key_fails(site: Site, sshd: Sshd, capsys: pytest.CaptureFixture[str]) -> None:
    site.configure(private_key=sshd.stranger)
    code, lines, _ = site.check(capsys)
    assert code == 1
    assert "the server refused the key" in only(lines, "FAIL ")


def test_missing_remote_folder_is_reported_and_never_created(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    absent = site.remote / "depot"
    site.configure(remote_dir=absent)
    code, lines, _ = site.check(capsys)
    assert code == 1
    line = only(lines, "FAIL ")
    assert f"does the remote folder {absent} exist? (rorfeed never creates it)" in line
    assert not absent.exists()


def test_read_only_remote_folder_is_reported(
    site: Site, sshd: Sshd, capsys: pytest.CaptureFixture[str]
) -> None:
    site.configure(port=sshd.readonly_port)
    code, lines, _ = site.check(capsys)
    assert code == 1
    line = only(lines, "FAIL ")
    assert "write probe" in line
    assert "permission denied by the server" in line
    assert site.server() == []


def test_probe_is_removed_every_time(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    (site.remote / "already-there.xml").write_bytes(b"<x/>\n")
    for _ in range(2):
        code, _, _ = site.check(capsys)
        assert code == 0
    assert site.server() == ["already-there.xml"]


def test_unmapped_source_units_are_warnings_and_do_not_fail(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    write_export(site.root, [*EXPORT, ("NEUR", 12, 0, 3), ("CARDIO", 8, 0, 1)])
    code, lines, err = site.check(capsys)
    assert code == 0
    warnings = [line for line in lines if line.startswith("WARN ")]
    assert warnings == [
        "WARN 750712184 Hôpital Test: source: unit CARDIO is not in the mapping"
        " (its rows are ignored)",
        "WARN 750712184 Hôpital Test: source: unit NEUR is not in the mapping"
        " (its rows are ignored)",
    ]
    assert "check passed (2 warnings)" in err


def test_mapped_unit_absent_from_the_source_is_a_warning(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    (site.root / "export.csv").write_text("unit;installed;closed;available\nREA;10;1;2\n", "utf-8")
    code, lines, _ = site.check(capsys)
    assert code == 0
    assert "mapped unit MED (fiche 52/200) is absent from the extraction" in only(lines, "WARN ")


def test_referential_missing_a_mapped_fiche_fails_and_unmapped_perimeter_fiche_warns(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site.configure(referential="ror_id\n52/100\n52/500\n52/900\n")
    code, lines, err = site.check(capsys)
    assert code == 1
    fail = only(lines, "FAIL ")
    assert fail.startswith("FAIL 750712184 Hôpital Test: referential: mapped fiche 52/200")
    warn = only(lines, "WARN ")
    assert warn.startswith("WARN 750712184 Hôpital Test: referential: fiche 52/900")
    assert "declare it with mode = manual" in warn
    assert "check failed: 1 problem, 1 warning" in err


def test_referential_covering_the_mapping_passes_with_a_warning_for_the_rest(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site.configure(referential="52/100\n52/200\n52/500\n52/900\n")
    code, lines, _ = site.check(capsys)
    assert code == 0
    assert "every mapped fiche is in the perimeter" in only(lines, "OK   750712184 Hôpital Test: r")
    assert "fiche 52/900" in only(lines, "WARN ")


def test_source_down_is_a_fail_line_and_the_destination_is_still_checked(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    (site.root / "export.csv").unlink()
    code, lines, _ = site.check(capsys)
    assert code == 1
    fail = only(lines, "FAIL ")
    assert fail.startswith("FAIL 750712184 Hôpital Test: source: unreachable: ")
    assert "export.csv" in fail
    assert only(lines, 'OK   destination "operator"')


def test_invalid_mapping_lists_each_problem_and_the_source_is_still_checked(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    (site.root / "mapping.csv").write_text(MAPPING + "REA;52/600;Doublon;auto\n", "utf-8")
    code, lines, _ = site.check(capsys)
    assert code == 2  # a configuration error, as run-once and serve treat it (SPEC §2, §4)
    assert "local code REA already mapped on line 2" in only(lines, "FAIL ")
    assert "source: 2 rows" in only(lines, "OK   750712184 Hôpital Test: source")
