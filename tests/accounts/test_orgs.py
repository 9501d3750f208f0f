"""Organizations and their members, through the REST API: roles, who may grant what, the last owner."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.api_helpers import API, error_code
from tests.conftest import Account


def members(client: TestClient, org: str) -> dict[str, str]:
    r = client.get(f"{API}/orgs/{org}/members")
    assert r.status_code == 200, r.text
    return {m["name"]: m["role"] for m in r.json()}


def put_member(client: TestClient, who: Account, org: str, user: str, role: str):  # type: ignore[no-untyped-def]
    return client.put(f"{API}/orgs/{org}/members/{user}", json={"role": role}, headers=who.headers)


@pytest.fixture
def lab(client: TestClient, alice: Account) -> str:
    r = client.post(
        f"{API}/orgs",
        json={"name": "lab", "display_name": "The Lab", "description": "We do science."},
        headers=alice.headers,
    )
    assert r.status_code == 201, r.text
    return "lab"


def test_creating_an_org_makes_the_creator_its_owner(client: TestClient, alice: Account, lab: str) -> None:
    org = client.get(f"{API}/orgs/lab").json()
    assert org["name"] == "lab"
    assert org["kind"] == "org"
    assert org["display_name"] == "The Lab"
    assert org["description"] == "We do science."
    assert members(client, lab) == {"alice": "owner"}
    me = client.get(f"{API}/user", headers=alice.headers).json()
    assert me["orgs"] == [{"name": "lab", "display_name": "The Lab", "role": "owner"}]


def test_creating_an_org_needs_a_write_login(client: TestClient, alice: Account) -> None:
    assert error_code(client.post(f"{API}/orgs", json={"name": "anon-org"}), 401) == "login_required"
    r = client.post(f"{API}/orgs", json={"name": "read-org"}, headers=alice.read_headers)
    assert error_code(r, 403) == "insufficient_scope"
    assert client.get(f"{API}/orgs/read-org").status_code == 404


@pytest.mark.parametrize("name", ["api", "a/b", "", "x" * 65, "-x"])
def test_invalid_org_names_are_422(client: TestClient, alice: Account, name: str) -> None:
    assert (
        error_code(client.post(f"{API}/orgs", json={"name": name}, headers=alice.headers), 422)
        == "invalid_name"
    )


def test_duplicate_org_name_is_409(client: TestClient, alice: Account, bob: Account, lab: str) -> None:
    for name in ("lab", "LAB", "bob"):
        assert (
            error_code(client.post(f"{API}/orgs", json={"name": name}, headers=bob.headers), 409)
            == "name_taken"
        )


def test_owner_adds_members_and_changes_their_roles(
    client: TestClient, alice: Account, bob: Account, lab: str
) -> None:
    r = put_member(client, alice, lab, "bob", "write")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "bob", "display_name": "bob", "role": "write"}
    assert members(client, lab) == {"alice": "owner", "bob": "write"}
    assert client.get(f"{API}/user", headers=bob.headers).json()["orgs"][0]["role"] == "write"

    assert put_member(client, alice, lab, "Bob", "admin").status_code == 200
    assert members(client, lab)["bob"] == "admin"
    assert put_member(client, alice, lab, "bob", "read").status_code == 200
    assert members(client, lab)["bob"] == "read"


def test_invalid_role_or_unknown_user_is_refused(
    client: TestClient, alice: Account, bob: Account, lab: str
) -> None:
    assert error_code(put_member(client, alice, lab, "bob", "emperor"), 422) == "invalid_input"
    assert error_code(put_member(client, alice, lab, "nobody", "read"), 404) == "owner_not_found"
    assert error_code(put_member(client, alice, "nolab", "bob", "read"), 404) == "owner_not_found"
    # An organization cannot be a member of an organization.
    client.post(f"{API}/orgs", json={"name": "other"}, headers=alice.headers)
    assert error_code(put_member(client, alice, lab, "other", "read"), 404) == "user_not_found"
    assert members(client, lab) == {"alice": "owner"}


@pytest.mark.parametrize("role", ["read", "write"])
def test_non_admin_members_cannot_add_members(
    client: TestClient, make_user: Callable[..., Account], alice: Account, lab: str, role: str
) -> None:
    member, outsider = make_user("member"), make_user("outsider")
    put_member(client, alice, lab, "member", role)
    r = put_member(client, member, lab, "outsider", "read")
    assert error_code(r, 403) == "forbidden"
    assert error_code(put_member(client, member, lab, "member", "admin"), 403) == "forbidden"
    assert error_code(put_member(client, outsider, lab, "outsider", "read"), 403) == "forbidden"
    r = client.delete(f"{API}/orgs/{lab}/members/alice", headers=member.headers)
    assert error_code(r, 403) == "forbidden"
    assert members(client, lab) == {"alice": "owner", "member": role}


def test_anonymous_and_read_tokens_cannot_manage_members(
    client: TestClient, alice: Account, bob: Account, lab: str
) -> None:
    r = client.put(f"{API}/orgs/{lab}/members/bob", json={"role": "read"})
    assert error_code(r, 401) == "login_required"
    r = client.put(f"{API}/orgs/{lab}/members/bob", json={"role": "read"}, headers=alice.read_headers)
    assert r.status_code == 403
    assert members(client, lab) == {"alice": "owner"}


def test_admins_manage_members_but_only_owners_grant_owner(
    client: TestClient, make_user: Callable[..., Account], alice: Account, lab: str
) -> None:
    erin = make_user("erin")
    make_user("frank")
    put_member(client, alice, lab, "erin", "admin")

    assert put_member(client, erin, lab, "frank", "write").status_code == 200
    assert put_member(client, erin, lab, "frank", "admin").status_code == 200
    assert error_code(put_member(client, erin, lab, "frank", "owner"), 403) == "forbidden"
    assert error_code(put_member(client, erin, lab, "erin", "owner"), 403) == "forbidden"
    # An admin can neither demote nor remove an owner.
    assert error_code(put_member(client, erin, lab, "alice", "read"), 403) == "forbidden"
    r = client.delete(f"{API}/orgs/{lab}/members/alice", headers=erin.headers)
    assert error_code(r, 403) == "forbidden"
    assert members(client, lab) == {"alice": "owner", "erin": "admin", "frank": "admin"}

    # An admin removes a non-owner.
    assert client.delete(f"{API}/orgs/{lab}/members/frank", headers=erin.headers).status_code == 204
    assert "frank" not in members(client, lab)

    # The owner grants owner.
    assert put_member(client, alice, lab, "erin", "owner").status_code == 200
    assert members(client, lab)["erin"] == "owner"


def test_the_last_owner_can_neither_leave_nor_be_demoted(
    client: TestClient, alice: Account, bob: Account, lab: str
) -> None:
    r = client.delete(f"{API}/orgs/{lab}/members/alice", headers=alice.headers)
    assert error_code(r, 409) == "last_owner"
    assert error_code(put_member(client, alice, lab, "alice", "admin"), 409) == "last_owner"
    assert members(client, lab) == {"alice": "owner"}

    # With a second owner, the first may step down and then leave.
    assert put_member(client, alice, lab, "bob", "owner").status_code == 200
    assert put_member(client, alice, lab, "alice", "admin").status_code == 200
    assert members(client, lab) == {"alice": "admin", "bob": "owner"}
    assert (
        error_code(client.delete(f"{API}/orgs/{lab}/members/bob", headers=bob.headers), 409) == "last_owner"
    )
    assert client.delete(f"{API}/orgs/{lab}/members/alice", headers=alice.headers).status_code == 204
    assert members(client, lab) == {"bob": "owner"}


def test_a_member_may_leave(client: TestClient, alice: Account, bob: Account, lab: str) -> None:
    put_member(client, alice, lab, "bob", "read")
    assert client.delete(f"{API}/orgs/{lab}/members/bob", headers=bob.headers).status_code == 204
    assert members(client, lab) == {"alice": "owner"}
    r = client.delete(f"{API}/orgs/{lab}/members/bob", headers=alice.headers)
    assert error_code(r, 404) == "member_not_found"


def test_a_site_admin_manages_any_org(
    client: TestClient, make_user: Callable[..., Account], alice: Account, bob: Account, lab: str
) -> None:
    root = make_user("root", admin=True)
    assert put_member(client, root, lab, "bob", "owner").status_code == 200
    assert client.delete(f"{API}/orgs/{lab}/members/alice", headers=root.headers).status_code == 204
    assert members(client, lab) == {"bob": "owner"}


def test_members_can_create_repos_in_the_org_by_role(
    client: TestClient, make_user: Callable[..., Account], alice: Account, lab: str
) -> None:
    reader, writer = make_user("reader"), make_user("writer")
    put_member(client, alice, lab, "reader", "read")
    put_member(client, alice, lab, "writer", "write")
    r = client.post(f"{API}/repos", json={"name": "by-reader", "owner": lab}, headers=reader.headers)
    assert error_code(r, 403) == "forbidden"
    r = client.post(f"{API}/repos", json={"name": "by-writer", "owner": lab}, headers=writer.headers)
    assert r.status_code == 201, r.text
    assert r.json()["full_name"] == "lab/by-writer"


def test_a_read_token_cannot_leave_an_org(client: TestClient, alice: Account, bob: Account, lab: str) -> None:
    put_member(client, alice, lab, "bob", "write")
    r = client.delete(f"{API}/orgs/{lab}/members/bob", headers=bob.read_headers)
    assert error_code(r, 403) == "insufficient_scope"
    assert members(client, lab) == {"alice": "owner", "bob": "write"}
