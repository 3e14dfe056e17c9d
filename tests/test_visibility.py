"""Ownership and visibility over real HTTP: who sees which representation of a photo, the
listings, PATCH (catalog, ticket, manifest and its backup copy), and reindex keeping the last
visibility."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from imagepipe import keys
from imagepipe.catalog.photos import PhotoCatalog, page_query
from imagepipe.catalog.reindex import Reindexer
from imagepipe.config import Settings
from imagepipe.storage.factory import backup_storage, primary_storage
from imagepipe.tickets import TicketStore
from tests.owners import bearer
from tests.stack import replicate_all, run_worker_burst
from tests.viewers import MALLORY, PROBLEM, processed, signature, unsigned, upload

MERGE_PATCH = {"content-type": "application/merge-patch+json"}
UNKNOWN = "/photos/0123456789abcdef0123"


async def test_the_owner_sees_everything_with_signed_urls(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    (photo_id,) = await processed(http, settings, None)
    answer = await http.get(f"/photos/{photo_id}")
    photo = answer.json()
    assert answer.status_code == 200 and photo["visibility"] == "private"
    assert photo["ticket_id"] and photo["sha256"] and photo["backup"] == "pending"
    assert (
        "private" in answer.headers["cache-control"] and answer.headers["vary"] == "Authorization"
    )
    for name, size in photo["sizes"].items():
        query = signature(size["url"])
        assert unsigned(size["url"]) == f"/photos/{photo_id}/{name}" and query.keys() == {
            "exp",
            "sig",
        }
        assert time.time() + settings.signed_url_ttl_s <= int(query["exp"])
    async with httpx.AsyncClient(base_url=str(http.base_url)) as anonymous:  # no grant needed
        served = await anonymous.get(photo["sizes"]["t"]["url"])
    assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
    max_age = int(served.headers["cache-control"].removeprefix("private, max-age="))
    assert settings.signed_url_ttl_s - 5 <= max_age <= settings.signed_url_ttl_s + 300
    again = await http.get(f"/photos/{photo_id}", headers={"if-none-match": answer.headers["etag"]})
    assert again.status_code == 304  # the same signed URLs within their bucket: the same ETag


async def test_others_see_a_public_photo_s_public_fields_and_nothing_of_a_private_one(
    http: httpx.AsyncClient, settings: Settings, api_url: str
) -> None:
    private, public = await processed(http, settings, None, "public")
    nothing = (await http.get(UNKNOWN)).json()
    async with httpx.AsyncClient(base_url=api_url) as anonymous:
        for headers in ({}, MALLORY):
            hidden = await anonymous.get(f"/photos/{private}", headers=headers)
            assert hidden.status_code == 404 and hidden.headers["content-type"] == PROBLEM
            assert hidden.json() == nothing  # word for word: nothing says it exists
            seen = await anonymous.get(f"/photos/{public}", headers=headers)
            body = seen.json()
            assert set(body) == {"id", "format", "width", "height", "sizes", "visibility"}
            assert all("?" not in s["url"] for s in body["sizes"].values())
            thumb = await anonymous.get(body["sizes"]["t"]["url"], headers=headers)
            assert thumb.status_code == 200 and thumb.headers["cache-control"] == "max-age=3600"
        owner_etag = (await http.get(f"/photos/{public}")).headers["etag"]
        other = await anonymous.get(f"/photos/{public}", headers={"if-none-match": owner_etag})
        assert other.status_code == 200  # another representation: the owner's ETag is not its
        mine = await anonymous.get(
            f"/photos/{public}", headers={"if-none-match": seen.headers["etag"]}
        )
        assert mine.status_code == 304


async def test_a_private_derivative_without_a_signature_is_404_even_for_its_owner(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    (photo_id,) = await processed(http, settings, None)
    answer = await http.get(f"/photos/{photo_id}/t")
    assert answer.status_code == 404 and answer.headers["content-type"] == PROBLEM


async def test_listings_are_the_caller_s_photos_or_the_public_stream(
    http: httpx.AsyncClient, settings: Settings, api_url: str
) -> None:
    private, public, newest = await processed(http, settings, None, "public", "public")
    mine = (await http.get("/photos")).json()["photos"]
    # newest first by completion, which the worker's order decides, not the uploads'
    order = [(p["completed_at"], p["id"]) for p in mine]  # the keyset: ties go by id
    assert order == sorted(order, reverse=True) and len(order) == 3
    assert {(p["id"], p["visibility"]) for p in mine} == {
        (newest, "public"),
        (public, "public"),
        (private, "private"),
    }
    assert all("sig" in signature(url) for p in mine for url in p["sizes"].values())
    async with httpx.AsyncClient(base_url=api_url, headers=MALLORY) as mallory:
        assert (await mallory.get("/photos")).json()["photos"] == []
        first = (await mallory.get("/photos", params={"visibility": "public", "limit": 1})).json()
        rest = (
            await mallory.get("/photos", params={"visibility": "public", "before": first["next"]})
        ).json()
    stream = [p["id"] for p in first["photos"] + rest["photos"]]
    assert stream == [p["id"] for p in mine if p["id"] != private] and rest["next"] is None
    assert all("?" not in url for p in first["photos"] for url in p["sizes"].values())
    async with httpx.AsyncClient(base_url=api_url) as anonymous:
        assert (await anonymous.get("/photos", params={"visibility": "public"})).status_code == 200
        assert (await anonymous.get("/photos")).status_code == 401
        refused = await anonymous.get("/photos", params={"visibility": "private"})
        assert refused.status_code == 400 and refused.headers["content-type"] == PROBLEM


@pytest.mark.parametrize(("owner", "index"), [("tester", "photos_owner"), (None, "photos_public")])
async def test_listings_read_their_index(
    catalog: PhotoCatalog, owner: str | None, index: str
) -> None:
    statement = page_query(None, 24, owner).compile(
        dialect=catalog.engine.dialect, compile_kwargs={"literal_binds": True}
    )
    async with catalog.engine.connect() as db:
        # whatever rows earlier tests left: make the planner take an index that gives the
        # order (a plan that still sorts, or scans, would show these as disabled nodes)
        for plan_kind in ("seqscan", "bitmapscan", "sort"):
            await db.execute(text(f"SET enable_{plan_kind} = off"))
        plan = "\n".join(row[0] for row in await db.execute(text(f"EXPLAIN {statement}")))
    assert f"Index Scan using {index}" in plan and "Sort" not in plan, plan


async def manifest_on(settings: Settings, photo_id: str) -> dict[str, Any]:
    return json.loads((settings.primary_root / "manifests" / f"{photo_id}.json").read_text())


async def manifest_object(catalog: PhotoCatalog, photo_id: str) -> tuple[int, str, str]:
    query = text("SELECT bytes, sha256, backup_state FROM objects WHERE key = :key")
    async with catalog.engine.connect() as db:
        row = (await db.execute(query, {"key": keys.manifest(photo_id)})).one()
    return row[0], row[1], row[2]


async def test_patch_changes_the_catalog_the_manifest_and_its_backup_copy(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, catalog: PhotoCatalog, api_url: str
) -> None:
    (photo_id,) = await processed(http, settings, None)
    await replicate_all(settings, redis)
    changed = await http.patch(
        f"/photos/{photo_id}", json={"visibility": "public"}, headers=MERGE_PATCH
    )
    assert changed.status_code == 200 and changed.json()["visibility"] == "public"
    async with httpx.AsyncClient(base_url=api_url) as anonymous:
        assert (await anonymous.get(f"/photos/{photo_id}")).status_code == 200
        stream = (await anonymous.get("/photos", params={"visibility": "public"})).json()
    assert [p["id"] for p in stream["photos"]] == [photo_id]
    written = (settings.primary_root / "manifests" / f"{photo_id}.json").read_bytes()
    assert json.loads(written)["visibility"] == "public"
    digest = hashlib.sha256(written).hexdigest()
    assert await manifest_object(catalog, photo_id) == (len(written), digest, "pending")
    assert await redis.zscore(keys.REPLICATION_PENDING, keys.manifest(photo_id)) is not None
    await replicate_all(settings, redis)
    backup = backup_storage(settings)
    assert json.loads(await backup.read(keys.manifest(photo_id)))["visibility"] == "public"
    await backup.close()
    assert (await manifest_object(catalog, photo_id))[2] == "completed"


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, b'{"visibility": "public"}', 415),  # no content type
        ({"content-type": "text/plain"}, b'{"visibility": "public"}', 415),
        (MERGE_PATCH, b'{"visibility": "secret"}', 400),
        (MERGE_PATCH, b'{"visibility": null}', 400),
        (MERGE_PATCH, b'{"visibility": "public", "owner": "mallory"}', 400),
        (MERGE_PATCH, b"{}", 400),
        (MERGE_PATCH, b"[]", 400),
        (MERGE_PATCH, b'{"visibility": "pub', 400),
        (MERGE_PATCH, b'{"visibility": "' + b"x" * 5000 + b'"}', 413),
    ],
)
async def test_a_patch_that_is_not_a_change_of_visibility_is_a_precise_4xx(
    http: httpx.AsyncClient, settings: Settings, headers: dict[str, str], body: bytes, status: int
) -> None:
    (photo_id,) = await processed(http, settings, None)
    answer = await http.patch(f"/photos/{photo_id}", content=body, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM and answer.json()["detail"]
    assert (await manifest_on(settings, photo_id))["visibility"] == "private"


async def test_only_the_owner_may_patch_and_another_s_photo_is_404(
    http: httpx.AsyncClient, settings: Settings, api_url: str
) -> None:
    (photo_id,) = await processed(http, settings, None)
    public = {"visibility": "public"}
    async with httpx.AsyncClient(base_url=api_url, headers=MERGE_PATCH) as other:
        stranger = await other.patch(f"/photos/{photo_id}", json=public, headers=MALLORY)
        unknown = await other.patch(UNKNOWN, json=public, headers=MALLORY)
        assert stranger.status_code == unknown.status_code == 404
        assert stranger.json() == unknown.json()
        assert (await other.patch(f"/photos/{photo_id}", json=public)).status_code == 401
        reader = bearer(scopes=("photos:read",))
        assert (
            await other.patch(f"/photos/{photo_id}", json=public, headers=reader)
        ).status_code == 403
    assert (await manifest_on(settings, photo_id))["visibility"] == "private"


async def test_a_patch_while_processing_is_not_undone_by_its_completion(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, api_url: str
) -> None:
    ticket = await upload(http)
    changed = await http.patch(
        f"/photos/{ticket['photo_id']}", json={"visibility": "public"}, headers=MERGE_PATCH
    )
    assert changed.status_code == 200
    tickets = TicketStore(redis, settings.ticket_retention_s)
    assert (await tickets.get(ticket["id"])).visibility == "public"  # the ticket follows
    # the worst order: the completion read the ticket before the PATCH changed it
    await tickets.revise(ticket["id"], visibility="private")
    await run_worker_burst(settings)
    assert (await manifest_on(settings, ticket["photo_id"]))["visibility"] == "public"
    async with httpx.AsyncClient(base_url=api_url) as anonymous:
        assert (await anonymous.get(f"/photos/{ticket['photo_id']}")).status_code == 200
    polled = (await http.get(f"/tickets/{ticket['id']}")).json()
    assert "visibility" not in polled and polled["status"] == "completed"  # its shape kept


async def reindex(settings: Settings, catalog: PhotoCatalog) -> None:
    primary, backup = primary_storage(settings), backup_storage(settings)
    try:
        await Reindexer(catalog, primary, backup).run()
    finally:
        await primary.close()
        await backup.close()


async def test_a_photo_made_private_never_comes_back_public_after_a_catalog_loss(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, catalog: PhotoCatalog, api_url: str
) -> None:
    (photo_id,) = await processed(http, settings, "public")
    await http.patch(f"/photos/{photo_id}", json={"visibility": "private"}, headers=MERGE_PATCH)
    await replicate_all(settings, redis)
    # the catalog is lost, and so is primary's manifest: backup's copy must be the new one
    async with catalog.engine.begin() as db:
        await db.execute(text("TRUNCATE objects, photos"))
    (settings.primary_root / "manifests" / f"{photo_id}.json").unlink()
    await reindex(settings, catalog)
    assert await hidden_from_anyone_but_its_owner(api_url, http, photo_id)
    # a catalog restored from a backup older than the PATCH: the manifest wins
    async with catalog.engine.begin() as db:
        await db.execute(text("UPDATE photos SET visibility = 'public'"))
    await reindex(settings, catalog)
    assert await hidden_from_anyone_but_its_owner(api_url, http, photo_id)


async def hidden_from_anyone_but_its_owner(
    api_url: str, http: httpx.AsyncClient, photo_id: str
) -> bool:
    async with httpx.AsyncClient(base_url=api_url) as anonymous:
        by_id = await anonymous.get(f"/photos/{photo_id}")
        stream = (await anonymous.get("/photos", params={"visibility": "public"})).json()
    owner = (await http.get(f"/photos/{photo_id}")).json()
    return by_id.status_code == 404 and stream["photos"] == [] and owner["visibility"] == "private"
