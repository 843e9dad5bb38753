"""Subscribe to a WHEP endpoint with recvonly audio and video transceivers for a fixed
time, count decoded video frames and received audio frames, DELETE the session and print
a JSON summary on stdout.

With --datachannel it asks for audio only plus a data channel m-line: it opens a channel of
its own ("upstream") and sends one message on it (the node drops subscribers' messages), and
records every message on the channels the node opens towards it, per label, in the summary
(`common.encode_message`).

    whep_client.py URL --seconds N [--datachannel] [--verbose]
"""

import argparse
import asyncio
import time

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

import common


async def consume(track, counts: dict) -> None:
    """Pull frames until the track ends; aiortc hands out only decoded frames."""
    kind = track.kind
    try:
        while True:
            frame = await track.recv()
            counts[kind] += 1
            if kind == "video":
                counts["video_size"] = [frame.width, frame.height]
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
    consumers = []

    @pc.on("track")
    def on_track(track):
        consumers.append(asyncio.ensure_future(consume(track, counts)))

    summary = {"role": "whep"}
    try:
        await pc.setLocalDescription(await pc.createOffer())
        await common.wait_gathered(pc)
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
        summary["delete_status"] = await common.delete(location)
    finally:
        await pc.close()
        for c in consumers:
            c.cancel()
    if args.datachannel:
        summary["received"] = received
    summary["video_frames"] = counts["video"]
    summary["audio_frames"] = counts["audio"]
    if "video_size" in counts:
        summary["video_size"] = counts["video_size"]
    common.dump(summary)
    return 0 if summary.get("connection") == "connected" else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--connect-timeout", type=float, default=10)
    p.add_argument("--datachannel", action="store_true")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    common.setup_logging(args.verbose)
    common.run(lambda: main(args), deadline_s=args.seconds + args.connect_timeout + 30)
