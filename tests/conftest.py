"""Fixtures shared by unit and integration tests: a fresh database per test, on SQLite and on a
real PostgreSQL (started once per session; see tests/stubs/postgres.py)."""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import HealthCheck, settings

from tests.hostile import PROFILE
from tests.stubs.postgres import Postgres, server_binaries

# Property tests (hypothesis, schemathesis): derandomized in CI, so a run is reproducible and
# its time known; `SESAME_HYPOTHESIS=long` searches at random and keeps failing examples in
# .hypothesis/ to replay them first next time.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=_QUIET)
settings.register_profile("long", deadline=None, print_blob=True, suppress_health_check=_QUIET)
settings.load_profile(PROFILE)


@pytest.fixture(scope="session")
def postgres_url():
    url = os.environ.get("SESAME_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if server_binaries() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing in CI (.ci/run installs them)")
        pytest.skip("no PostgreSQL server here (apt-get install postgresql to run these)")
    server = Postgres().start()
    yield server.url
    server.stop()


def _fresh_postgres_database(server_url: str) -> str:
    import psycopg

    name = f"sesame_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sesame.db'}"
    return _fresh_postgres_database(request.getfixturevalue("postgres_url"))


def pytest_terminal_summary(terminalreporter):
    from tests.hostile import SERVER_ERRORS, TRIED

    if TRIED:
        kinds = ", ".join(f"{source} {count:,}" for source, count in sorted(TRIED.items()))
        terminalreporter.write_line(f"hostile inputs tried: {sum(TRIED.values()):,} ({kinds}); "
                                    f"5xx answers: {len(SERVER_ERRORS)}")
