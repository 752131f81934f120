"""Settings of the service, read from the environment (``FBNET_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_db_url() -> str:
    return f"sqlite:///{Path.cwd() / 'fbnet.db'}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FBNET_", extra="ignore")

    db_url: str = ""  # empty: a SQLite file ``fbnet.db`` in the working folder
    admin_token: SecretStr | None = None
    read_token: SecretStr | None = None  # when set, readers need it (or the admin or a device token)

    def resolved_db_url(self) -> str:
        return self.db_url or default_db_url()
