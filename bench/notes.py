"""The readings of BENCHMARKS.md: how each row is measured and what its numbers mean.

Kept apart from the code that measures, so the prose can be read (and reviewed) as prose.
The notes quote no figure: they are pasted into every run's report, and a figure written
here would be stale from the next run on (``tests/test_bench.py`` checks that every number
in them is a row number, and that the report's notes quote nothing the run did not measure).
Figures belong in the tables and detail lines the benchmarks write; these notes say how to
read them, why they are what they are, and what is left to try where a goal is not met.
"""

from __future__ import annotations

NOTES: dict[int, str] = {
    0: """
`make bench` installs the `bench` extra (libvips as `pyvips` + `pyvips-binary`: no system
package), then runs `python -m bench` and rewrites this file; the machine table above says
how long this run took. Real photos join row 1 from `IMAGEPIPE_CORPUS` (its camera-sized
JPEGs; `make bench` points it at `../shared/testdata` where that exists). `make bench-quick`
(`python -m bench --quick`) runs every row on small inputs and writes nothing: CI runs it and
`tests/test_bench.py` checks its shape, so the suite cannot rot; its verdicts mean nothing.
`python -m bench --rows ROWS` runs some rows only (a comma-separated list), `--json FILE`
keeps every raw sample.

Reading the numbers: these machines are shared (compare the load averages in the machine
table with its core count), so absolute times swing between minutes. Row 1 is therefore
timed in CPU time of the one process, interleaved and paired round by round; the stack rows
time wall clock against an anchor measured just before and after. Rerun on a quiet machine
before reading anything into a small difference.
""",
    1: """
**How.** Three contenders make the configured default ladder (`DEFAULT_SIZES` in
`imagepipe/config.py`: five long-edge sizes and a square crop; baseline JPEG with subsampled
chroma, no metadata, EXIF orientation applied, ICC converted to sRGB) from the same bytes in
one process on one thread. *Naive Pillow* decodes every pixel, orients and converts at full
size, and makes each size from the full image with Lanczos; its output is the PSNR reference.
*libvips* (one worker thread, operation cache off) runs `thumbnail_buffer` to the largest
size and `resize` from that for every smaller one; sRGB export only for tagged photos, as
imagepipe. Like imagepipe it decodes a JPEG in full whenever the shrink to the largest size
is small (`vips_thumbnail_find_jpegshrink` leaves "at least a factor of two for the final
resize"), so for most camera photos it decodes all the pixels.

**How imagepipe renders** (`imaging/render.py`, whose comments give the measured reasons):
shrink-on-load may land a few percent below the largest size, which is then upscaled to it
with Bicubic, so a common phone photo decodes at half scale instead of in full; a photo
decoded in full shrinks to the largest size with a box filter (pixel-area averaging)
instead of Hamming; after a DCT-scaled decode with little shrinking left, Bicubic instead of
Hamming; and the square crop comes from a rung at least twice its size (Lanczos) instead of
a one-to-one crop of the smallest rung, which sat half a pixel off centre and blurred it.

**Where the time goes** (profile table): the decode is a large share even at half scale,
because Huffman decoding costs the same at any scale and only the IDCT and colour conversion
shrink; the one resize to the largest size is the largest single step; every smaller size
together, then encoding, share the rest.

**Why a goal can be missed.** *vs libvips:* photo by photo the paired ratios move between
runs on a shared machine, and the libvips line sits close to that noise. imagepipe wins
clearly on photos whose largest size needs no resize and where shrink-on-load applies; on
mid-sized photos both decode every pixel and resample about the same number of pixels, and
Pillow's resampler is plain C while libvips's is vectorised, so it is about even there.
*vs naive:* naive's cost grows with pixels times sizes while imagepipe's floor is an entropy
decode of every coefficient plus one large resample and encode, so the ratio grows with the
photo. Going further needs a SIMD resampler (Pillow-SIMD does not follow current Pillow) or a
decoder that scales by eighths (libjpeg-turbo can; Pillow's `draft` offers only halvings).
*PSNR:* the reference is Lanczos from every pixel; small rungs made by any cascade differ
from it most, and the filter choice there moves PSNR by several dB (compare libvips's column
on the same sizes).
""",
    2: """
**How.** The batch is uploaded while the worker is frozen (SIGSTOP on its process group,
decode children included), then thawed; the wall time runs from the thaw to the last
ticket's own `updated_at`. The anchor runs `imaging.render` on the same photo in as many
warm processes as the worker has decode slots. The verdict uses CPU per photo, read from
/proc for every process of the stack: at saturation every core is busy, so photos/s = cores /
CPU per photo, and the decode children (which run `imaging.render` and nothing else) give
the imaging-only cost measured in the same window as the overhead, so their share of all CPU
is the throughput ratio, paired and blind to the load other tenants put into wall clocks.
The wall-clock rates are shown too (their ratio can even exceed one when the anchor happened
to run in a busier minute), and so is the anchor's own CPU per photo as a cross-check.

**Where the time goes.** Beyond imaging (the decode children, which should match the
anchor's own CPU per photo: the cross-check line): the worker process (reading the original,
pickling it to a child, atomic writes with their SHA hashes, Redis, signing and sending two
callbacks), the API (applying the two callbacks, writing the manifest, publishing to SSE)
and Valkey; the CPU table gives each its share. A decode child keeps freed memory in its
heap (`mallopt` in `sandbox.py`, under the same RLIMIT_AS cap), so it does not page-fault
every large buffer back in for each photo; callbacks are POSTed inline from `process_photo`
(a queued `send_callback` job only when that POST fails). **Still open:** fold the
`processing.started` callback into a ticket update the worker makes directly; pipeline the
callback's Redis writes in the API.
""",
    3: """
**How.** Whole local stack (api, worker, replicator, Valkey, rclone S3), concurrent
uploaders, timed from the first upload to the last ticket showing every object verified on
backup; the verdict is the decode children's share of the whole stack's CPU per photo, as
in row 2 (the uploading client is not counted: it stands for the browsers). What the ceiling
does not pay: receiving and hashing the upload, the replicator's copies of every object
through boto3 (Python-heavy signing and hashing) and rclone serving them. In production the
replicator and the backup store run elsewhere; on one small machine they take their CPU
from imaging. The replicator verifies a copy by the server's own checksum (S3 checks the
PUT's Content-MD5 and answers with the MD5 of what it stored, its ETag) rather than reading
it back. **Still open:** hash derivatives once, in the child that made them; more
replicator processes where S3 is far away.
""",
    4: """
**How.** One photo at a time on the idle stack; a tight poller and an SSE stream watch the
ticket. The breakdown uses the worker's own `process_photo` histogram (Prometheus) for the
job. The anchor is `imaging.render` of the same photo in this process, taken just before each
upload while nothing else of ours runs; each sample is paired with its own anchor, and the
verdict is the median of those differences (an anchor taken once, before or after, moves
with the machine's load and swings the verdict run to run).

**Reading.** What is left is mostly the job itself running longer than the anchor: on a few
shared cores the worker's hops (worker -> child -> worker, a thread hop per file write and
fsync), the replicator copying the original, the API applying the `started` callback and
the observers' own polling all take CPU from the render at the same moment, which the anchor
(rendering alone) never pays. The queue and callback part is the last line of the
breakdown. **Still open:** fold `processing.started` into a direct ticket update (one HTTP
round trip less during the render); on a machine with cores to spare the remaining overhead
is mostly contention and should shrink without code changes.
""",
    5: """
**How.** API and Valkey only (no worker, no replicator: the queue just grows). Raw
`image/jpeg` bodies of a camera-sized photo (multipart costs more parsing). A closed loop of
clients finds the capacity; then an open loop at half that rate, each latency measured from
its scheduled start (no coordinated omission). The anchor writes the same bytes the way the
filesystem store does (temp file, fsync, rename, fsync the folder), one file after another.

**Reading.** The API's own CPU per upload (below the table: receiving the body in chunks,
hashing, writing, the header probe, a few Redis round trips) shows how busy one API process
is at the open loop's rate. A tail beyond that comes from sharing a few cores: the load
generator (one Python process pushing the bodies), Valkey, the API and the machine's other
tenants (load average below) all queue for a CPU, and a request that waits behind another's
body in the single event loop, or behind the client, waits for a while. The closed loop
shows the same queueing at full load. **Still open:** one API process per core (`uvicorn
--workers`, or several `imagepipe api` behind the load balancer, as DESIGN.md scales it);
rerun on a quiet machine with a native load generator before tuning further.
""",
    6: """
**How.** The same API process serves three endpoints to the same closed-loop clients,
interleaved in rounds (bare, ticket, conditional ticket, ...). The ticket polled is a queued
one: what a client polls while waiting, `Retry-After` included. The verdict is capacity: one
API process saturates at one over its CPU per request, measured from /proc. The request rates
seen are bound by the clients (Python, same process, same cores), so they understate the
difference; a native load generator would show the capacity ratio.

**Reading.** Polls no longer reach FastAPI: `api.polls.TicketPolls`, the outermost
middleware, answers `GET`/`HEAD /tickets/{id}` from the ticket's *view*, the response body
the web tier writes beside the ticket in the same transaction (split around the backup
state, which the replicator changes without touching the ticket). One Lua script reads the
view, checks that the ticket still exists and computes the backup state from the photo's
backup hash, so a poll or a Not Modified is one Valkey round trip and no model, no JSON encoding, no
routing. A ticket without a view (written by an older version, restored by the audit) and
every error go on to the route, which answers the same bytes and ETag. Row 12 measures the
same thing from outside with a native-speed client. **Still open:** the many-ticket poll
(`?ids=`) still reads each ticket's backup state in a round trip of its own.
""",
    7: """
**How.** Whole stack; small photos, so the upload rate stays within what the machine can
resize. Each object's lag is read from the replication log itself (`updated_at -
enqueued_at` when it completed). Then rclone's S3 stops for the outage while uploads
continue, restarts on the same port, and the drain is timed. The anchor PUTs the same
objects one after another with plain boto3 to the same server.

**Reading.** A copy that succeeds after failing wakes every entry sleeping out its backoff
(`replicator.py`, one asyncio.Event), so the drain starts soon after S3's return (the
table's "waiting for the first copy") instead of after a whole backoff cap. What remains of
any catch-up gap is boto3's CPU per request (signing, hashing, a thread hop) in one
replicator process sharing the cores with rclone, which serves both the anchor and the
replicator. **Still open:** raise `replication_concurrency` while a backlog exists; more
replicator processes (they share the log's consumer group).
""",
    8: """
**How.** The API's RSS is sampled while a large upload streams in (byte limit raised); the
body streams to a temp file while being hashed, so it never sits in memory. The decode child
is a real `sandbox.DecodePool` slot (the worker's, with its memory cap); its high-water mark
is reset just before it renders the large photo, which it decodes at a reduced scale thanks
to shrink-on-load.
""",
    12: """
**How.** What a user of the defaults gets, measured from outside: `imagepipe api`, `worker`
and `replicator`, one each, with their default settings (INFO logs; decode slots from the
cores this process may use) beside the embedded Valkey, PostgreSQL and rclone S3. The load
comes from `bench.wrk`, a keep-alive HTTP client on uvloop in a process of its own, so the
client, not the server, no longer sets the rate (row 6's clients share the benchmark's own
event loop). Passes interleave `/healthz`, a completed and backed-up ticket, and its Not
Modified answer; each pass's rate is divided by the `/healthz` pass beside it.

**Why row 6 read differently.** Row 6 divides API CPU per request, measured while Python
clients in the same process capped the rate; a wrk-like client counts the whole request
path (Valkey round trips, the event loop's own work per connection), which is what a user
sees. Both now read the fast path described under row 6.
""",
    13: """
**How.** The largest photos of the corpus (real phone and camera JPEGs, with EXIF
orientation, ICC profiles and GPS), uploaded by a few concurrent clients to the whole stack
with default settings; the time runs from the first upload to the last ticket whose every
object is verified on backup. The anchor is libvips (one thread per process, one process per
core) making the same ladders, before and after. The CPU table adds the catalog's
PostgreSQL, which rows 2 and 3 leave out; the profile comes from a pass of its own under
py-spy (sampling costs CPU), each sample filed under the package its innermost frame is in.

**Why it differs from row 3.** Row 3's ceiling is imagepipe's own imaging in Pillow, timed
as CPU share; here the ceiling is libvips on real photos, timed by the wall clock: every
millisecond the other roles spend is a millisecond the decode children do not get on a
machine this small. **Where the CPU goes.** The decode children are most of it (Pillow's
decode and resize, the worker profile's largest package); then the replicator (boto3 signs
every PUT with a SHA256 of its body and the server checks its MD5: hashing, signing and a
thread hop per object), the API (accepting each upload, then applying two callbacks with a
manifest write and catalog statements), the worker's own process (reading the original,
pickling it to the child and the renditions back, an fsynced write per size, two signed
callbacks) and rclone serving the copies. What was done: hashing moved into the writing
thread, the replicator reads each small object whole and hashes and PUTs it in one thread
hop without botocore's extra CRC32. **Still open:** the replicator and rclone belong on
other machines in production; fold `processing.started` into a ticket update the worker
makes itself; batch the completion callbacks; hash derivatives once, in the child.
""",
    14: """
**How.** One photo at a time on the idle default stack, rotating over the same photos as
row 13; a tight poller and an event stream watch each ticket. Each sample is paired with
libvips making that photo's ladder in this process just before it, and the verdict is the
median of the differences.

**Reading.** The pipeline's own part is the upload's answer, the queue pick-up, the hop to
the decode child and back, one fsynced write per size and the completion callback. On two
shared cores the replicator copying the original, the observers' polling and the other
tenants run during the render too, so the job itself takes longer than the anchor alone.
**Still open:** an inline `processing.started` (one round trip less while rendering), and
renditions written while the next one is being encoded.
""",
    15: """
**How.** The accept path with default settings, the way a user runs it: the API and the
replicator (which copies every accepted original to backup as it arrives), the worker
stopped so the queue only grows. `bench.wrk` posts raw bodies rotating over the same photos:
a closed loop of sixteen connections finds the capacity, then an open loop at half that rate
times each request from its scheduled start (no coordinated omission).

**Reading.** The tail is queueing for a CPU: at half capacity the one API process is busy
half the time, while the replicator (hashing and signing each copy), rclone, Valkey and the
load generator share the same two cores, and a request that arrives while another's body is
being received waits in the single event loop. Hashing no longer runs on the event loop
(it moved into the thread that writes), and stalls of the loop past
`IMAGEPIPE_LOOP_STALL_MS` are logged, so a long tail can be traced to its cause. **Still
open:** one API process per usable core (the many-process API is not built yet).
""",
    16: """
**How.** The whole stack with bench settings. Photos are uploaded and backed up first; then
uploads arrive at a steady rate (an open loop) while those photos are deleted one at a time,
spread over the same window. Both sides come from the catalog once the run is over: a
copy's lag from its object row (made, then confirmed in backup, as in row 7), a deletion's
propagation from its request to the last removal of its objects, which is the backup copy.

**Reading.** A deletion is a copy run backwards on the same replication log and the same
replicator slots: the tombstone is written in the request, every object is removed from
primary and then from backup, each removal a log entry of its own. So its propagation is
the time its entries wait behind the copies queued before them, plus two deletes per object
instead of one verified PUT; a deletion that waits longer than its copies points at the
removals being claimed late, not at slow deletes. **Still open:** a lane of its own for
removals, so a copy backlog after an outage never holds up a deletion.
""",
    17: """
**How.** The API alone with default settings, filesystem primary. Rounds alternate one
`POST /photos` of a large PNG and a tus upload of the same bytes through `/uploads/`
(creation, then PATCHes of a fixed chunk size, the last one accepting the photo), on one
keep-alive connection; the headline is the median of the rounds' ratios (each pair ran
seconds apart on the shared machine).

**Reading.** A tus upload writes each byte once, as a POST does: into the partial upload's
file, fsynced before each PATCH's answer; at the last byte the accept path reads the file
back through its checks (sniffed, probed, hashed) and links it into place as the original
instead of copying it. What remains is a round trip, a lock and an offset in Valkey per
PATCH, an fsync per chunk instead of one per file, and the read-back. **Still open:**
hashing each PATCH's bytes as they arrive (a hash state that any API process could resume),
so the read-back goes too.
""",
}
