"""Shared bits of the WHIP/WHEP test clients: signaling over plain urllib (aiortc does not
pull in an HTTP client) and a hard deadline so a client never outlives its test."""

import asyncio
import hashlib
import json
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

HTTP_TIMEOUT_S = 10


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _post_offer(url: str, sdp: str, redirects: int = 3) -> tuple[int, str, str]:
    req = urllib.request.Request(
        url, data=sdp.encode(), method="POST", headers={"Content-Type": "application/sdp"}
    )
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
            location = urllib.parse.urljoin(url, r.headers.get("Location", ""))
            return r.status, r.read().decode(), location
    except urllib.error.HTTPError as e:
        # A 307/308 (the room lives on another node) keeps the method and body, as WHIP and
        # WHEP clients do (RFC 9725 §4.6); urllib follows redirects of GET only.
        target = e.headers.get("Location") if e.code in (307, 308) else None
        if target and redirects > 0:
            return _post_offer(urllib.parse.urljoin(url, target), sdp, redirects - 1)
        return e.code, e.read().decode(errors="replace"), ""


def _delete(url: str) -> int:
    req = urllib.request.Request(url, method="DELETE")
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


async def post_offer(url: str, sdp: str) -> tuple[int, str, str]:
    """POST the offer; returns (status, body, absolute Location)."""
    return await asyncio.to_thread(_post_offer, url, sdp)


async def delete(url: str) -> int:
    return await asyncio.to_thread(_delete, url)


async def wait_gathered(pc) -> None:
    """aiortc gathers all candidates in setLocalDescription; this only guards older ones."""
    while pc.iceGatheringState != "complete":
        await asyncio.sleep(0.05)


def encode_message(m) -> str:
    """A data channel message as one short comparable string: `t:<text>` for a string,
    `b:<length>:<sha-256 prefix>` for bytes (so large messages keep the summary small)."""
    if isinstance(m, str):
        return "t:" + m
    return f"b:{len(m)}:{hashlib.sha256(m).hexdigest()[:12]}"


def dump(summary: dict) -> None:
    print(json.dumps(summary), flush=True)


def run(main, deadline_s: float) -> None:
    """Run `main()` under a hard deadline: a client that hangs is a failed client."""

    async def bounded():
        try:
            return await asyncio.wait_for(main(), timeout=deadline_s)
        except asyncio.TimeoutError:
            dump({"error": f"deadline of {deadline_s}s exceeded"})
            os._exit(3)

    sys.exit(asyncio.run(bounded()) or 0)
