"""The S3 backend (boto3; AWS, MinIO, rclone serve s3, moto).

boto3 is blocking, so every call runs in a thread. botocore errors are translated into the
storage error tree here and only here (`translate_error`).

A create-only put sends ``If-None-Match: *``, so the server itself refuses to rewrite an
object (412 -> ObjectExists). Some servers accept the header and overwrite anyway (rclone
serve s3 does), and a multipart upload cannot carry it through boto3's transfer manager, so
the first create-only put probes the server once; where the header is not honoured (and for
multipart bodies) the put checks that the key is free, then writes. That check is not atomic:
it is safe only because every create-only key has one writer at a time (an original's key
belongs to one Idempotency-Key lease or one fresh random id; a derivative's to the one
running job of its ticket: arq runs one job per id).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import secrets
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import IO, Any, ParamSpec, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from imagepipe.storage.base import (
    CHUNK_SIZE,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StoragePermissionDenied,
)

P = ParamSpec("P")
T = TypeVar("T")

SPOOL_MEMORY = 8 * 1024 * 1024  # bodies up to this stay in memory while spooling
MULTIPART_THRESHOLD = 64 * 1024 * 1024  # above this, a multipart upload instead of one PUT
_TRANSFER = TransferConfig(
    multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=16 * 1024 * 1024
)

_Uploads = list[tuple[str, str]]  # spelled here: inside the class, `list` is the method
_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
_PRECONDITION_FAILED = {"412", "PreconditionFailed"}
_NOT_IMPLEMENTED = {"501", "NotImplemented"}
PROBE_PREFIX = ".imagepipe-probe/if-none-match-"  # written and deleted once per process
_DENIED = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_BUCKET_IS_OURS = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}


class S3Storage(Storage):
    """Objects in one bucket of any S3-compatible endpoint; sha256 kept in object metadata."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        access_key: str,
        secret_key: str,
        connect_timeout_ms: int = 3000,
        read_timeout_ms: int = 30000,
    ) -> None:
        self.bucket = bucket
        self.region = region
        self._conditional: bool | None = None  # does the server honour If-None-Match: *?
        config = Config(
            connect_timeout=connect_timeout_ms / 1000,
            read_timeout=read_timeout_ms / 1000,
            retries={"mode": "standard"},
            signature_version="s3v4",
            # every PUT carries Content-MD5 already: no CRC32 trailer computed besides it
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # Path-style (http://host/bucket/key): moto, rclone and MinIO need no DNS per bucket.
            s3={"addressing_style": "path"},
        )
        # One client for the store's lifetime: botocore clients are thread-safe and pool
        # their connections.
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r})"

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, create_only: bool = False
    ) -> ObjectInfo:
        """Spool the chunks while hashing, then upload with Content-MD5 and sha256 metadata."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as spool:
            sha256, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
            async for chunk in chunks:
                sha256.update(chunk)
                md5.update(chunk)
                size += len(chunk)
                await _spool_write(key, spool, chunk)
            offered = ObjectInfo(key=key, size=size, sha256=sha256.hexdigest())
            confirmed = await self._store(spool, offered, md5.digest(), create_only)
        return ObjectInfo(key=key, size=size, sha256=offered.sha256, confirmed=confirmed)

    async def put_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> ObjectInfo:
        """Bytes already in memory: hashed and uploaded in one thread hop, no spool."""
        if create_only or len(data) > MULTIPART_THRESHOLD:
            return await super().put_bytes(key, data, create_only=create_only)
        return await self._call(key, self._put_whole, key, data)

    def _put_whole(self, key: str, data: bytes) -> ObjectInfo:
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        offered = ObjectInfo(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        confirmed = self._upload(io.BytesIO(data), offered, md5, False)
        return ObjectInfo(key=key, size=len(data), sha256=offered.sha256, confirmed=confirmed)

    async def conditional_writes(self) -> bool:
        """Whether the server refuses a PUT with ``If-None-Match: *`` over an existing key."""
        if self._conditional is None:
            self._conditional = await self._call(PROBE_PREFIX, self._probe_conditional)
        return self._conditional

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream a GET in CHUNK_SIZE pieces, one thread hop per piece."""
        response = await self._call(key, self._client.get_object, Bucket=self.bucket, Key=key)
        body = response["Body"]
        try:
            while chunk := await self._call(key, body.read, CHUNK_SIZE):
                yield chunk
        finally:
            body.close()

    async def head(self, key: str) -> ObjectInfo:
        """Size, mtime and the sha256 we stored as metadata (None for objects put by others)."""
        response = await self._call(key, self._client.head_object, Bucket=self.bucket, Key=key)
        return ObjectInfo(
            key=key,
            size=int(response["ContentLength"]),
            # some servers (rclone) capitalise metadata names: compare without case
            sha256=_metadata(response).get("sha256"),
            modified=response["LastModified"].timestamp(),
        )

    async def delete(self, key: str) -> None:
        """DELETE the key (S3 answers 204 for a missing one too)."""
        await self._call(key, self._client.delete_object, Bucket=self.bucket, Key=key)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Page through ListObjectsV2 (S3 returns keys in UTF-8 order, which is key order)."""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
        while page := await self._call(prefix, next, pages, None):
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    key=item["Key"],
                    size=int(item["Size"]),
                    modified=item["LastModified"].timestamp(),
                )

    # -- multipart uploads, for resumable uploads' parts (`storage.partial`) ----------------

    async def start_multipart(self, key: str) -> str:
        """Begin a multipart upload at ``key``; its upload id."""
        started = await self._call(
            key, self._client.create_multipart_upload, Bucket=self.bucket, Key=key
        )
        return str(started["UploadId"])

    async def put_part(self, key: str, upload_id: str, number: int, data: bytes) -> None:
        """Store part ``number`` (1-based; every part but the last at least 5 MiB)."""
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        await self._call(
            key,
            self._client.upload_part,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ContentMD5=base64.b64encode(md5).decode("ascii"),
        )

    async def finish_multipart(self, key: str, upload_id: str, parts: int) -> None:
        """Join parts 1..``parts`` into the object (parts past them are left out)."""
        await self._call(key, self._complete, key, upload_id, parts)

    def _complete(self, key: str, upload_id: str, parts: int) -> None:
        paginator = self._client.get_paginator("list_parts")
        found = {
            part["PartNumber"]: part["ETag"]
            for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id)
            for part in page.get("Parts", [])
        }
        listed = [{"PartNumber": n, "ETag": found[n]} for n in range(1, parts + 1)]
        self._client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": listed}
        )

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Drop a multipart upload and its parts; one already gone is fine."""
        with contextlib.suppress(ObjectNotFound):
            await self._call(
                key,
                self._client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )

    async def multipart_uploads(self, prefix: str) -> _Uploads:
        """Every unfinished multipart upload under ``prefix``: (key, upload id)."""
        return await self._call(prefix, self._multipart_uploads, prefix)

    def _multipart_uploads(self, prefix: str) -> _Uploads:
        paginator = self._client.get_paginator("list_multipart_uploads")
        return [
            (upload["Key"], upload["UploadId"])
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for upload in page.get("Uploads", [])
        ]

    async def read_start(self, key: str, length: int) -> bytes:
        """The object's first ``length`` bytes (a ranged GET)."""
        if length <= 0:
            return b""
        response = await self._call(
            key, self._client.get_object, Bucket=self.bucket, Key=key, Range=f"bytes=0-{length - 1}"
        )
        body = response["Body"]
        try:
            return bytes(await self._call(key, body.read))
        finally:
            body.close()

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet (for the local stack and tests)."""
        await self._call(self.bucket, self._ensure_bucket)

    async def close(self) -> None:
        """Close the client's connection pool."""
        await asyncio.to_thread(self._client.close)

    async def _call(self, key: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking boto3 call in a thread, translating its errors at this boundary."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise translate_error(exc, key) from exc

    async def _store(
        self, spool: IO[bytes], offered: ObjectInfo, md5: bytes, create_only: bool
    ) -> bool:
        """Upload the spooled bytes; with create_only never over an existing object."""
        key, multipart = offered.key, offered.size > MULTIPART_THRESHOLD
        conditional = create_only and not multipart and await self.conditional_writes()
        # checked, not conditional: safe only with one writer per key (module docstring)
        if create_only and not conditional and await self.exists(key):
            raise ObjectExists(offered)
        try:
            return await self._call(key, self._upload, spool, offered, md5, conditional)
        except ObjectExists:
            raise ObjectExists(offered) from None  # the server's 412, with what was offered

    def _probe_conditional(self) -> bool:
        """PUT one empty probe object twice with If-None-Match: *; a 412 means it is honoured."""
        key = PROBE_PREFIX + secrets.token_hex(8)
        try:
            for _ in range(2):
                self._client.put_object(Bucket=self.bucket, Key=key, Body=b"", IfNoneMatch="*")
        except ClientError as exc:
            if _code(exc) in _NOT_IMPLEMENTED:
                return False
            if _code(exc) not in _PRECONDITION_FAILED:
                raise
            return True
        finally:
            # the answer stands even if this cleanup fails (an empty object is left behind)
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.delete_object(Bucket=self.bucket, Key=key)
        return False  # the second PUT overwrote the first

    def _upload(self, body: IO[bytes], offered: ObjectInfo, md5: bytes, if_none: bool) -> bool:
        """Upload; whether the server's ETag confirms it stored exactly these bytes."""
        body.seek(0)
        key, size, metadata = offered.key, offered.size, {"sha256": offered.sha256 or ""}
        if size > MULTIPART_THRESHOLD:
            # Each part carries its own checksum; the sha256 metadata is checked on verify.
            extra = {"Metadata": metadata}
            self._client.upload_fileobj(body, self.bucket, key, ExtraArgs=extra, Config=_TRANSFER)
            return False  # a multipart ETag is not the object's MD5
        response = self._client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentLength=size,
            # The server recomputes the MD5 and refuses the PUT if a byte changed on the way.
            ContentMD5=base64.b64encode(md5).decode("ascii"),
            Metadata=metadata,
            # the server refuses (412) to replace an existing object
            **({"IfNoneMatch": "*"} if if_none else {}),
        )
        # a single PUT's ETag is the MD5 of what the server stored (unless it encrypts with
        # KMS, where it differs and the caller reads the object back instead)
        return bool(response.get("ETag", "").strip('"') == md5.hex())

    def _ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _NOT_FOUND and _code(exc) != "NoSuchBucket":
                raise
        # us-east-1 is the one region that refuses an explicit LocationConstraint.
        extra = {}
        if self.region != "us-east-1":
            extra = {"CreateBucketConfiguration": {"LocationConstraint": self.region}}
        try:
            self._client.create_bucket(Bucket=self.bucket, **extra)
        except ClientError as exc:
            if _code(exc) not in _BUCKET_IS_OURS:  # someone made it between head and create
                raise


def translate_error(exc: Exception, key: str) -> StorageError:
    """Map a botocore error onto the storage error tree (the only place that knows botocore)."""
    if not isinstance(exc, ClientError):
        # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ...: transient.
        return StorageError(f"{key}: S3 unreachable ({type(exc).__name__}: {exc})")
    code = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = exc.response.get("Error", {}).get("Message", "")
    if code in _NOT_FOUND:
        return ObjectNotFound(key)
    if code in _PRECONDITION_FAILED or status == 412:
        return ObjectExists(ObjectInfo(key=key, size=0))  # `put` adds what was offered
    if code in _DENIED or status == 403:
        return StoragePermissionDenied(f"{key}: S3 refused our credentials ({code}) {message}")
    return StorageError(f"{key}: S3 error {code} (HTTP {status}) {message}".rstrip())


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def _spool_write(key: str, spool: IO[bytes], chunk: bytes) -> None:
    try:
        await asyncio.to_thread(spool.write, chunk)
    except OSError as exc:  # the local temp disk, not S3: still a storage failure
        raise StorageError(f"{key}: cannot spool the upload: {exc}") from exc


def _metadata(response: Mapping[str, Any]) -> dict[str, str]:
    """User metadata with lower-cased names."""
    return {k.lower(): v for k, v in response.get("Metadata", {}).items()}
