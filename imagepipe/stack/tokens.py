"""`imagepipe token`: mint a grant for a script, the command-line client or an operator.

    imagepipe token --owner alice --scope "photos:write photos:read" --ttl 1h

It needs the grant secret and nothing else (no S3 keys, no Redis): ``IMAGEPIPE_GRANT_SECRET``
from the environment, as every api process has it, or, for a local stack, the one
`imagepipe dev` keeps in ``<data dir>/secrets.json`` (``--data-dir storage``). As with
`imagepipe dev`, a variable you set wins over the file. A secret production would refuse
(unset, short, documented) is refused here too, so a minted grant is one the API can take.

The grant goes to stdout alone (``export IMAGEPIPE_TOKEN=$(imagepipe token ...)``); what it
holds goes to stderr. The server's settings (and Pillow, which they load) are imported only
when a grant is minted: `imagepipe upload` parses its flags with the same parser.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imagepipe.grants import KNOWN_SCOPES, LIMIT_CLAIMS, MAX_TTL_S, READ, WRITE, mint
from imagepipe.models import VISIBILITIES

SECRET_VARIABLE = "IMAGEPIPE_GRANT_SECRET"  # noqa: S105 (a name, not a secret)
DEFAULT_SCOPE = f"{WRITE} {READ}"  # what the client needs; delete only when asked for
_TTL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``90s``, ``15m``, ``1h``, ``24h`` (or plain seconds) -> seconds, at most 24 h."""
    match = _TTL.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 1h or 24h")
    seconds = int(match[1]) * _UNIT_S[match[2]]
    if not 0 < seconds <= MAX_TTL_S:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a grant lives from 1 s to 24 h (the API refuses longer ones)"
        )
    return seconds


def parse_scopes(text: str) -> tuple[str, ...]:
    """Space-separated scopes, each one the API knows."""
    scopes = tuple(dict.fromkeys(text.split()))
    unknown = [scope for scope in scopes if scope not in KNOWN_SCOPES]
    if unknown or not scopes:
        raise argparse.ArgumentTypeError(f"scopes are among {' '.join(KNOWN_SCOPES)}; got {text!r}")
    return scopes


def grant_secret(data_dir: Path | None, environ: Mapping[str, str] = os.environ) -> str:
    """The secret to sign with: the environment's, else the local stack's; checked."""
    from imagepipe.config import grant_secret_weakness

    secret = environ.get(SECRET_VARIABLE) or _stack_secret(data_dir)
    weakness = grant_secret_weakness(secret)
    if weakness:
        raise ValueError(f"{weakness}: the API would refuse to start with it, so no grant")
    return secret


def _stack_secret(data_dir: Path | None) -> str:
    from imagepipe.stack.credentials import SECRETS_FILE, dev_secrets

    if data_dir is None:
        raise ValueError(
            f"no grant secret: set {SECRET_VARIABLE} (the api's), "
            "or name a local stack's data dir with --data-dir (e.g. --data-dir storage)"
        )
    if not (data_dir / SECRETS_FILE).is_file():
        raise ValueError(
            f"{data_dir / SECRETS_FILE} does not exist: run `imagepipe dev` there once, "
            f"or set {SECRET_VARIABLE}"
        )
    try:
        return dev_secrets(data_dir)["grant_secret"]
    except RuntimeError as exc:  # a damaged file: it says which and what to do
        raise ValueError(str(exc)) from None


def claims_of(args: argparse.Namespace) -> dict[str, Any]:
    """The optional claims the flags set: the default visibility and the limits."""
    claims = {name: getattr(args, name) for name in LIMIT_CLAIMS}
    claims["visibility"] = args.visibility
    return {name: value for name, value in claims.items() if value is not None}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`imagepipe token`'s flags."""
    token = commands.add_parser("token", help="mint a grant (needs only the grant secret)")
    token.add_argument("--owner", required=True, help="the owner id (the grant's sub)")
    token.add_argument(
        "--scope", type=parse_scopes, default=DEFAULT_SCOPE, help=f"default: {DEFAULT_SCOPE!r}"
    )
    token.add_argument("--ttl", type=parse_ttl, default=3600, help="90s, 15m, 1h ... 24h")
    token.add_argument("--visibility", choices=VISIBILITIES, help="what uploads are by default")
    for name in LIMIT_CLAIMS:
        flag = "--" + name.replace("_", "-")
        token.add_argument(flag, type=_whole, help=f"the {name} claim (fair-use limit)")
    token.add_argument(
        "--data-dir", type=Path, help=f"a local stack's data dir (when {SECRET_VARIABLE} is unset)"
    )


def _whole(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be at least 0")
    return value


def run_token(args: argparse.Namespace) -> int:
    """Print a grant on stdout (and what it holds on stderr); 2 when none can be minted."""
    try:
        secret = grant_secret(args.data_dir)
        token = mint(secret, args.owner, args.scope, args.ttl, **claims_of(args))
    except ValueError as exc:  # no usable secret, or an owner the API would refuse
        print(f"imagepipe token: {exc}", file=sys.stderr)
        return 2
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + args.ttl))
    print(token)
    print(f"a grant for {args.owner!r}: {' '.join(args.scope)}, until {until}", file=sys.stderr)
    return 0
