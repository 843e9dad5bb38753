"""Subscribe to a WHEP endpoint with recvonly audio and video transceivers for a fixed
time, count decoded video frames and received audio frames, DELETE the session and print
a JSON summary on stdout.

With --datachannel it asks for audio only plus a data channel m-line: it opens a channel of
its own ("upstream") and sends one message on it (the node drops subscribers' messages), and
records every message on the channels the node opens towards it, per label, in the summary
(`common.encode_message`).

With --gaps it also reports every pause longer than 0.25 s between two received frames of
a kind (`gaps`: [kind, last frame before, first frame after], Unix seconds) and, from the
receivers' statistics, each inbound RTP stream's SSRC, packets received and packets lost
(`inbound`): a viewer whose node switched sources under it keeps one SSRC per kind and loses
few packets, where a restarted numbering would count thousands lost.

    whep_client.py URL --seconds N [--datachannel] [--gaps] [--verbose]
"""

import argparse
import asyncio
import time

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

import common


GAP_S = 0.25


async def consume(track, counts: dict, gaps: list) -> None:
    """Pull frames until the track ends; aiortc hands out only decoded frames."""
    kind = track.kind
    last = None
    try:
        while True:
            frame = await track.recv()
            now = time.time()
            if last is not None and now - last > GAP_S:
                gaps.append([kind, round(last, 3), round(now, 3)])
            last = now
            counts[kind] += 1
            if kind == "video":
                counts["video_size"] = [frame.width, frame.height]
                counts.setdefault("first_video_at", now)
    except MediaStreamError:
        pass


async def main(args) -> int:
    # No STUN server: the node is on loopback and gathering must not wait for the internet.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="recvonly")
    received = {}
    if args.datachannel:
        upstream = pc.createDataChannel("upstream")

        @upstream.on("open")
        def on_open():
            upstream.send("from a subscriber: dropped by the node")

        @pc.on("datachannel")
        def on_datachannel(channel):
            messages = received.setdefault(channel.label, [])

            @channel.on("message")
            def on_message(m):
                messages.append(common.encode_message(m))

    else:
        pc.addTransceiver("video", direction="recvonly")
    counts = {"audio": 0, "video": 0}
    gaps = []
    consumers = []

    @pc.on("track")
    def on_track(track):
        consumers.append(asyncio.ensure_future(consume(track, counts, gaps)))

    summary = {"role": "whep"}
    try:
        await pc.setLocalDescription(await pc.createOffer())
        await common.wait_gathered(pc)
        posted_at = time.time()
        status, body, location = await common.post_offer(args.url, pc.localDescription.sdp)
        summary.update(status=status, location=location)
        if status != 201:
            summary["error"] = body
            common.dump(summary)
            return 1
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        t0 = time.monotonic()
        while pc.connectionState not in ("connected", "failed", "closed"):
            if time.monotonic() - t0 > args.connect_timeout:
                break
            await asyncio.sleep(0.05)
        summary["connection"] = pc.connectionState
        summary["connect_s"] = round(time.monotonic() - t0, 3)
        if pc.connectionState == "connected":
            await asyncio.sleep(args.seconds)
        if args.gaps:
            summary["inbound"] = await inbound(pc)
        summary["delete_status"] = await common.delete(location)
    finally:
        await pc.close()
        for c in consumers:
            c.cancel()
    if args.datachannel:
        summary["received"] = received
    if args.gaps:
        summary["gaps"] = gaps
    summary["video_frames"] = counts["video"]
    if "first_video_at" in counts:
        # Time to the first decoded video frame, from the offer's POST.
        summary["first_frame_s"] = round(counts["first_video_at"] - posted_at, 3)
    summary["audio_frames"] = counts["audio"]
    if "video_size" in counts:
        summary["video_size"] = counts["video_size"]
    common.dump(summary)
    return 0 if summary.get("connection") == "connected" else 1


async def inbound(pc) -> list:
    """Each inbound RTP stream the receivers saw: kind, SSRC, packets received and lost."""
    out = []
    for r in pc.getReceivers():
        stats = await r.getStats()
        for s in stats.values():
            if getattr(s, "type", None) == "inbound-rtp":
                out.append(
                    {
                        "kind": s.kind,
                        "ssrc": s.ssrc,
                        "packetsReceived": s.packetsReceived,
                        "packetsLost": s.packetsLost,
                    }
                )
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--connect-timeout", type=float, default=10)
    p.add_argument("--datachannel", action="store_true")
    p.add_argument("--gaps", action="store_true")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    common.setup_logging(args.verbose)
    common.run(lambda: main(args), deadline_s=args.seconds + args.connect_timeout + 30)
