"""What each caller may see of photos, and in which representation.

    owner (a grant with photos:read whose sub owns the photo)
        every field (ticket id, sha256, backup state, visibility) and every size's URL
        signed, valid for `signed_url_ttl_s`
    anyone else, anonymous too
        a public photo's public fields with its plain URLs; someone else's private photo is
        404, word for word as a photo that does not exist
    derivatives
        a signed URL is checked (403 when tampered or expired) and cached privately until it
        expires; without one, only a public photo's sizes are served (else 404)
    deleted photos
        404 to everyone, owner included, from the moment of the DELETE: the photo, every
        size (signed URLs too), the listings

Tickets stay capability URLs and keep plain size URLs: the owner follows `links.photo`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from imagepipe.api.indexing import PhotoIndex
from imagepipe.api.signing import UrlSigner
from imagepipe.api.views import gallery_view, photo_view, sizes_view
from imagepipe.api.visibility import NO_SUCH_PHOTO
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.catalog.visibility import VisibilityCatalog
from imagepipe.errors import NotFound
from imagepipe.grants import READ, Grant
from imagepipe.ids import is_photo_id
from imagepipe.models import PhotoManifest

NO_SUCH_SIZE = "no such photo size"
# a size served in place of the preferred format is cached this long at most (see routes)
STAND_IN_S = 300


def owns(grant: Grant | None, owner: str) -> bool:
    """Whether ``grant`` may read ``owner``'s photos in full."""
    return grant is not None and grant.allows(READ) and grant.owner == owner


@dataclass(frozen=True)
class Seen:
    """A photo as one caller sees it."""

    body: dict[str, Any]
    private: bool  # the owner's representation: no shared cache may keep it


@dataclass(frozen=True)
class Served:
    """How a derivative request may be answered and cached."""

    signed_until: int | None  # a signed URL's exp; None: a public photo's plain URL

    def cache_control(self, preferred: bool, immutable: str, stand_in: str) -> str:
        """The Cache-Control of the answer (``preferred``: not a stand-in format)."""
        if self.signed_until is None:
            return immutable if preferred else stand_in
        left = max(0, self.signed_until - int(time.time()))
        return f"private, max-age={left if preferred else min(left, STAND_IN_S)}"


class PhotoReads:
    """Reads of photos on behalf of a caller: one photo, a listing, a derivative."""

    def __init__(
        self,
        index: PhotoIndex,
        catalog: PhotoCatalog,
        access: VisibilityCatalog,
        signer: UrlSigner,
        size_names: list[str],
    ) -> None:
        self.index, self.catalog, self.access, self.signer = index, catalog, access, signer
        self.size_names = size_names

    async def photo(self, grant: Grant | None, photo_id: str) -> Seen:
        """The photo as ``grant`` may see it; 404 when it may not (never saying it exists)."""
        manifest = await self.index.manifest(photo_id)
        if owns(grant, manifest.owner):
            backup = await self.catalog.backup_state(photo_id)
            body = photo_view(manifest, backup)
            body.update(sizes=self._signed(body["sizes"]), visibility=manifest.visibility)
            return Seen(body, private=True)
        if manifest.visibility != "public":
            raise NotFound(NO_SUCH_PHOTO)
        return Seen(public_view(manifest), private=False)

    async def page(self, grant: Grant | None, before: str | None, limit: int) -> dict[str, Any]:
        """``grant``'s own photos (signed URLs), or with None the public stream."""
        owner = grant.owner if grant is not None else None
        rows, next_page = await self.index.page(before, limit, owner)
        body = gallery_view(rows, self.size_names, next_page)
        if owner is not None:
            for photo, row in zip(body["photos"], rows, strict=True):
                photo.update(sizes=self._signed_urls(photo["sizes"]), visibility=row.visibility)
        return body

    async def derivative(
        self, photo_id: str, size: str, method: str, exp: str | None, sig: str | None
    ) -> Served:
        """Whether this request may have the size: a valid signature, or a public photo;
        never a deleted photo's (a signed URL handed out before the DELETE included)."""
        signed = exp is not None or sig is not None
        path = f"/photos/{photo_id}/{size}"
        served = Served(self.signer.check(method, path, exp or "", sig or "") if signed else None)
        found = await self.access.access(photo_id) if is_photo_id(photo_id) else None
        if found is None or found.deleted or not (signed or found.public):
            raise NotFound(NO_SUCH_SIZE)
        return served

    def _signed(self, sizes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {
            name: {**size, "url": self.signer.sign(size["url"]).url} for name, size in sizes.items()
        }

    def _signed_urls(self, urls: dict[str, str]) -> dict[str, str]:
        return {name: self.signer.sign(url).url for name, url in urls.items()}


def public_view(manifest: PhotoManifest) -> dict[str, Any]:
    """What anyone may see of a public photo: no ticket id, sha256 or backup state."""
    return {
        "id": manifest.photo_id,
        "format": manifest.format,
        "width": manifest.width,
        "height": manifest.height,
        "sizes": sizes_view(manifest.photo_id, manifest.sizes),
        "visibility": manifest.visibility,
    }
