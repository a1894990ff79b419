"""``/v1/admin/keys`` and ``llmsvc keys`` against the real stack (PostgreSQL + Redis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import quote

import httpx
import pytest

from .test_gateway_limits import auth, chat, new_key, wait_for_usage

INJECTIONS = ["x'); DROP TABLE api_keys; --", "' OR '1'='1", "Robert\"; DELETE FROM usage_records; --",
              "%' OR name LIKE '%", "名前 \\' ; SELECT pg_sleep(5) --"]


@pytest.fixture(scope="module")
def http(pg_stack):
    with httpx.Client(base_url=pg_stack.cfg.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def model(pg_stack) -> str:
    return pg_stack.cfg.served_model_name or pg_stack.cfg.model.name


def test_admin_routes_need_an_admin_key(http, admin_secret):
    user = new_key(http, admin_secret, scopes=["chat", "train", "eval"])
    assert http.get("/admin/keys").status_code == 401
    assert http.get("/admin/keys", headers=auth("sk-not-a-real-key-at-all-000")).status_code == 401
    r = http.get("/admin/keys", headers=auth(user["key"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    assert http.post("/admin/keys", json={"name": "x"}, headers=auth(user["key"])).status_code == 403


def test_the_secret_is_shown_once_and_stored_only_as_a_hash(http, admin_secret):
    created = new_key(http, admin_secret, name="once", owner="team-a", rpm=7, tpm=700, daily_token_quota=7000,
                      max_concurrent=2)
    assert created["key"].startswith(created["prefix"]) and len(created["key"]) >= 3 + 43
    listed = http.get("/admin/keys", params={"owner": "team-a"}, headers=auth(admin_secret)).json()["data"]
    shown = [k for k in listed if k["id"] == created["id"]]
    assert shown and "key" not in shown[0] and created["key"] not in json.dumps(listed)
    assert (shown[0]["rpm"], shown[0]["tpm"], shown[0]["daily_token_quota"], shown[0]["max_concurrent"]) == \
        (7, 700, 7000, 2)
    one = http.get(f"/admin/keys/{created['id']}", headers=auth(admin_secret)).json()
    assert one["name"] == "once" and one["revoked_at"] is None


@pytest.mark.parametrize("text", INJECTIONS)
def test_sql_shaped_names_are_just_names(http, admin_secret, text):
    created = new_key(http, admin_secret, name=text, owner=text)
    assert created["name"] == text and created["owner"] == text
    by_owner = http.get("/admin/keys", params={"owner": text}, headers=auth(admin_secret)).json()["data"]
    assert [k["id"] for k in by_owner] == [created["id"]]
    for path in (f"/admin/keys/{quote(text, safe='')}", "/admin/keys/1%20OR%201=1",
                 "/admin/keys/'%3B%20DELETE%20FROM%20api_keys%3B--/usage"):
        assert http.get(path, headers=auth(admin_secret)).status_code == 404
    # Every table is still there and answers.
    assert http.get("/admin/keys", headers=auth(admin_secret)).status_code == 200
    assert http.get(f"/admin/keys/{created['id']}/usage", headers=auth(admin_secret)).status_code == 200


@pytest.mark.parametrize("body", [
    {}, {"name": ""}, {"name": "x", "scopes": ["root"]}, {"name": "x", "scopes": []}, {"name": "x", "rpm": 0},
    {"name": "x", "tpm": -5}, {"name": "x", "expires_at": "yesterday"}, {"name": "x", "is_admin": True},
    {"name": "x" * 201}, {"name": "x", "expires_at": "2001-01-01T00:00:00Z"},
])
def test_invalid_key_requests_are_400(http, admin_secret, body):
    r = http.post("/admin/keys", json=body, headers=auth(admin_secret))
    assert r.status_code == 400, r.text


def test_revoked_key_is_refused_and_its_usage_kept(http, admin_secret, model):
    key = new_key(http, admin_secret)
    assert chat(http, key["key"], model).status_code == 200
    wait_for_usage(http, admin_secret, key["id"], 1)
    r = http.delete(f"/admin/keys/{key['id']}", headers=auth(admin_secret))
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert chat(http, key["key"], model).status_code == 401
    assert wait_for_usage(http, admin_secret, key["id"], 1)["total"]["requests"] == 1
    assert http.delete("/admin/keys/0123456789abcdef0123456789abcdef", headers=auth(admin_secret)).status_code == 404


def llmsvc(pg_stack, admin_secret, *args) -> dict:
    out = subprocess.run([sys.executable, "-m", "services.cli.main", "keys", "--url", pg_stack.cfg.base_url,
                          "--api-key", admin_secret, "--json", *args], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "LLMSVC_API_KEY": ""})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cli_create_list_usage_revoke(pg_stack, http, admin_secret, model):
    created = llmsvc(pg_stack, admin_secret, "create", "--name", "cli-key", "--owner", "cli-team", "--rpm", "30",
                     "--model", model)
    assert created["allowed_models"] == [model] and created["rpm"] == 30
    assert chat(http, created["key"], model).status_code == 200
    listed = llmsvc(pg_stack, admin_secret, "list", "--owner", "cli-team")
    assert [k["id"] for k in listed["data"]] == [created["id"]]
    wait_for_usage(http, admin_secret, created["id"], 1)
    usage = llmsvc(pg_stack, admin_secret, "usage", created["id"], "--days", "7")
    assert usage["total"]["requests"] == 1 and usage["data"][0]["model"] == model
    revoked = llmsvc(pg_stack, admin_secret, "revoke", created["id"])
    assert revoked["revoked_at"]
    assert chat(http, created["key"], model).status_code == 401


def test_a_batch_key_is_created_with_its_scope(http, admin_secret, model):
    key = new_key(http, admin_secret, scopes=["chat", "batch"])
    assert key["scopes"] == ["chat", "batch"]
    assert chat(http, key["key"], model).status_code == 200
