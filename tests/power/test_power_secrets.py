"""The peer's BMC secrets file: validation with file:line, never echoing a secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from appliance.power.secrets import SecretsError, load_bmc_secrets


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_loads_inline_and_file_passwords(tmp_path: Path) -> None:
    _write(tmp_path / "ilo.pass", "file-Secret-1\n")
    secrets = load_bmc_secrets(_write(tmp_path / "bmc.yml", """\
rack1:
  user: admin
  password: "p@ss-Word1"
ilo:
  user: ops
  password_file: ilo.pass
"""))
    rack1 = secrets.lookup("rack1")
    assert (rack1.user, rack1.password) == ("admin", "p@ss-Word1")
    assert secrets.lookup("ilo").password == "file-Secret-1"
    assert "p@ss-Word1" not in repr(rack1) and "p@ss-Word1" not in repr(secrets)
    assert "file-Secret-1" not in f"{secrets.lookup('ilo')}"


def test_missing_name_is_named(tmp_path: Path) -> None:
    secrets = load_bmc_secrets(_write(tmp_path / "bmc.yml", "a: {user: u, password: x}\n"))
    with pytest.raises(SecretsError,
                       match=r"no BMC credentials named 'rack9' \(names defined: a\)"):
        secrets.lookup("rack9")


def test_errors_carry_line_and_hide_values(tmp_path: Path) -> None:
    path = _write(tmp_path / "bmc.yml", """\
good:
  user: admin
  password: "ok-1"
typo:
  user: x
  pasword: "Typo-Secret-77"
number:
  user: x
  password: 12345
both:
  user: x
  password: "Both-Secret-3"
  password_file: nope.pass
nofile:
  user: x
  password_file: missing.pass
""")
    with pytest.raises(SecretsError) as err:
        load_bmc_secrets(path)
    text = str(err.value)
    assert f"{path}:6: unknown field 'typo.pasword'" in text
    assert f"{path}:9: number.password must be a string: put it in quotes" in text
    assert f"{path}:10: both: give exactly one of `password` or `password_file`" in text
    assert f"{path}:16: cannot read password_file {tmp_path / 'missing.pass'}" in text
    for secret in ("Typo-Secret-77", "12345", "Both-Secret-3", "ok-1"):
        assert secret not in text


def test_yaml_error_and_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(SecretsError, match=r"bmc\.yml:2: "):
        load_bmc_secrets(_write(tmp_path / "bmc.yml", "a: {user: u\nb: [\n"))
    with pytest.raises(SecretsError, match=r"bmc\.yml:1: the BMC secrets file must be one YAML"):
        load_bmc_secrets(_write(tmp_path / "bmc.yml", "- a\n- b\n"))
    with pytest.raises(SecretsError, match="cannot read the BMC secrets file"):
        load_bmc_secrets(tmp_path / "absent.yml")


def test_warns_when_group_or_other_can_read(tmp_path: Path) -> None:
    path = _write(tmp_path / "bmc.yml", "a: {user: u, password: x}\n", mode=0o640)
    with capture_logs() as logs:
        load_bmc_secrets(path)
    assert [e["event"] for e in logs] == ["secrets_file_permissive"]
    assert logs[0]["mode"] == "0o640"
    path.chmod(0o600)
    with capture_logs() as logs:
        load_bmc_secrets(path)
    assert logs == []
