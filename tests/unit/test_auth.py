"""Endpoint API keys and the rule for serving without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from graph.auth import ANONYMOUS_TENANT, Authenticator, ConfigurationError
from graph.errors import Unauthorized
from graph.settings import Settings

KEYS = {"acme-key-0123456789abcdef": "acme", "globex-key-0123456789abcd": "globex"}


def test_a_bearer_key_names_its_tenant():
    auth = Authenticator(Settings(api_keys=json.dumps(KEYS)))
    assert auth.tenant("Bearer acme-key-0123456789abcdef") == "acme"
    assert auth.tenant("bearer   globex-key-0123456789abcd") == "globex"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic acme-key-0123456789abcdef",
                                    "Bearer acme-key-0123456789abcdeX", "acme-key-0123456789abcdef"])
def test_a_missing_or_unknown_key_is_unauthorized_without_echoing_it(header):
    auth = Authenticator(Settings(api_keys=json.dumps(KEYS)))
    with pytest.raises(Unauthorized) as caught:
        auth.tenant(header)
    assert "0123456789" not in caught.value.message
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_without_keys_everyone_is_the_default_tenant_on_loopback_only():
    assert Authenticator(Settings(host="127.0.0.1")).tenant(None) == ANONYMOUS_TENANT
    assert Authenticator(Settings(host="::1")).tenant("Bearer whatever") == ANONYMOUS_TENANT
    for host in ("0.0.0.0", "10.1.2.3", "sesame.example.com"):
        with pytest.raises(ConfigurationError, match="SESAME_API_KEYS"):
            Authenticator(Settings(host=host))
    Authenticator(Settings(host="0.0.0.0", allow_anonymous=True))
    Authenticator(Settings(host="0.0.0.0", api_keys=json.dumps(KEYS)))


@pytest.mark.parametrize("keys", ["not json", "[]", '{"short": "acme"}', '{"acme-key-0123456789abcdef": ""}'])
def test_malformed_keys_refuse_to_start_without_showing_them(keys):
    with pytest.raises(ConfigurationError) as caught:
        Authenticator(Settings(api_keys=keys))
    assert "acme-key" not in str(caught.value)


def test_scripts_serve_refuses_an_open_port_without_keys_before_starting_anything():
    env = {**os.environ, "SESAME_HOST": "0.0.0.0", "SESAME_PORT": "1"}
    env.pop("SESAME_API_KEYS", None)
    env.pop("SESAME_ALLOW_ANONYMOUS", None)
    done = subprocess.run([sys.executable, "serve_app.py"], cwd=Path(__file__).parents[2], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "without API keys" in done.stderr and "SESAME_ALLOW_ANONYMOUS" in done.stderr
    assert "Started a local Ray instance" not in done.stderr
