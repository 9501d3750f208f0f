import re
from pathlib import Path

import pytest

from opensci.settings import Settings

README = Path(__file__).parents[1] / "README.md"


def test_readme_documents_every_setting() -> None:
    documented = set(re.findall(r"`OPENSCI_([A-Z_]+)`", README.read_text()))
    missing = {name.upper() for name in Settings.model_fields} - documented
    assert not missing, f"README's configuration table misses: {sorted(missing)}"


def test_every_setting_has_a_description() -> None:
    assert all(f.description for f in Settings.model_fields.values())


def test_environment_overrides_the_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "site.toml"
    config.write_text('base_url = "https://toml.example"\nopen_registration = false\nsession_days = 7\n')
    monkeypatch.setenv("OPENSCI_CONFIG", str(config))
    monkeypatch.setenv("OPENSCI_SESSION_DAYS", "3")
    s = Settings()
    assert s.base_url == "https://toml.example"
    assert s.open_registration is False
    assert s.session_days == 3
    assert s.cookies_secure is True


def test_default_database_is_sqlite_in_the_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.effective_database_url == f"sqlite:///{tmp_path.resolve()}/opensci.db"


@pytest.mark.parametrize("value", ["lots", "1XB", "", "-1GB", "0"])
def test_a_bad_sql_memory_limit_is_refused_when_settings_load(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValueError, match="memory size"):
        Settings(home=tmp_path, sql_memory_limit=value)


def test_sql_memory_limits_in_every_unit_are_accepted(tmp_path: Path) -> None:
    for value in ("512MB", "2GB", "1.5GiB", "100000000"):
        assert Settings(home=tmp_path, sql_memory_limit=value).sql_memory_limit == value
