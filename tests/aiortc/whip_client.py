"""Publish a synthetic VP8 video track and an Opus audio track to a WHIP endpoint for a
fixed time, then DELETE the session. Prints a JSON summary on stdout.

With --datachannel it publishes audio only, plus data channels: "chat" (ordered, reliable)
from the start, carrying a numbered mix of text and binary messages (empty ones and a
60000-byte one among them) every 50 ms, and "late", opened a second after "chat", carrying
a text message every 200 ms. The summary lists every message sent per channel
(`common.encode_message`).

With --keyframe-every S it publishes as OBS does: a keyframe every S seconds, keyframe
requests (PLI, FIR) ignored.

With --start-when PATH it prepares everything (tracks, the gathered offer) and POSTs only
once PATH exists: a publisher that is already running when it reconnects, as OBS or a
browser re-POSTing to the room's URL after their node died, without the seconds a fresh
Python process takes to import aiortc. The summary's `posted_at` is the wall time of the
POST.

    whip_client.py URL --seconds N [--datachannel] [--keyframe-every S] [--start-when PATH]
                   [--verbose]
"""

import argparse
import asyncio
import fractions
import math
import os
import time

from array import array
from av import AudioFrame, VideoFrame
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender

import common

WIDTH, HEIGHT = 320, 240


def _fit(data: bytes, plane) -> bytes:
    """Pad a tightly packed plane to the plane's line stride."""
    if plane.line_size == plane.width:
        return data[: plane.buffer_size]
    pad = bytes(plane.line_size - plane.width)
    w = plane.width
    return b"".join(data[i * w : (i + 1) * w] + pad for i in range(plane.height))


class PatternVideo(VideoStreamTrack):
    """A moving gradient at 30 fps (VideoStreamTrack paces `next_timestamp`)."""

    def __init__(self):
        super().__init__()
        self.frames = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(WIDTH, HEIGHT, "yuv420p")
        # A luma ramp that scrolls and chroma that cycles, so every frame differs.
        shift = self.frames * 4
        row = bytes((x + shift) % 256 for x in range(WIDTH))
        luma = row * HEIGHT
        frame.planes[0].update(_fit(luma, frame.planes[0]))
        for plane in frame.planes[1:]:
            plane.update(bytes([(self.frames * 8) % 256]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        self.frames += 1
        return frame


class SineAudio(AudioStreamTrack):
    """A 440 Hz tone, 20 ms frames of 48 kHz mono s16, paced in real time."""

    RATE, SAMPLES = 48000, 960

    def __init__(self):
        super().__init__()
        self.pts = 0
        self.start = None

    async def recv(self):
        if self.start is None:
            self.start = time.time()
        else:
            self.pts += self.SAMPLES
            wait = self.start + self.pts / self.RATE - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        pcm = array(
            "h",
            (
                int(8000 * math.sin(2 * math.pi * 440 * (self.pts + i) / self.RATE))
                for i in range(self.SAMPLES)
            ),
        )
        frame = AudioFrame(format="s16", layout="mono", samples=self.SAMPLES)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = self.RATE
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, self.RATE)
        return frame


def chat_message(i: int):
    """Message number i of the "chat" channel: even ones text, odd ones binary."""
    if i % 10 == 4:
        return ""
    if i % 10 == 9:
        return b""
    if i % 40 == 7:
        return bytes(range(256)) * 234 + bytes(i % 256 for _ in range(96))  # 60000 bytes
    if i % 2 == 0:
        return f"text {i}"
    return i.to_bytes(4, "big") + b"\x00\xff"


async def wait_open(channel, timeout: float) -> bool:
    t0 = time.monotonic()
    while channel.readyState != "open":
        if channel.readyState == "closed" or time.monotonic() - t0 > timeout:
            return False
        await asyncio.sleep(0.02)
    return True


async def send_channels(pc, chat, seconds: float, sent: dict) -> None:
    """Send on "chat" every 50 ms and on "late" (opened after a second) every 200 ms."""
    if not await wait_open(chat, 10):
        return
    late = None
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        m = chat_message(i)
        chat.send(m)
        sent["chat"].append(common.encode_message(m))
        if late is None and time.monotonic() - t0 > 1.0:
            late = pc.createDataChannel("late")
            await wait_open(late, 10)
        if late is not None and i % 4 == 0:
            m = f"late {i}"
            late.send(m)
            sent["late"].append(common.encode_message(m))
        i += 1
        await asyncio.sleep(0.05)


def own_keyframes(every: float):
    """Keyframe requests ignored; the returned coroutine forces one every `every` s."""
    force = RTCRtpSender._send_keyframe
    RTCRtpSender._send_keyframe = lambda self: None

    async def periodic(sender):
        while True:
            await asyncio.sleep(every)
            force(sender)

    return periodic


async def main(args) -> int:
    periodic = own_keyframes(args.keyframe_every) if args.keyframe_every else None
    # No STUN server: the node is on loopback and gathering must not wait for the internet.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video, audio = PatternVideo(), SineAudio()
    pc.addTransceiver(audio, direction="sendonly")
    chat = None
    if args.datachannel:
        chat = pc.createDataChannel("chat")
    else:
        video_sender = pc.addTransceiver(video, direction="sendonly").sender
        if periodic:
            asyncio.ensure_future(periodic(video_sender))
    sent = {"chat": [], "late": []}
    summary = {"role": "whip"}
    try:
        await pc.setLocalDescription(await pc.createOffer())
        await common.wait_gathered(pc)
        if args.start_when:
            while not os.path.exists(args.start_when):
                await asyncio.sleep(0.005)
        summary["posted_at"] = time.time()
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
            if chat is not None:
                await send_channels(pc, chat, args.seconds, sent)
                summary["sent"] = sent
            else:
                await asyncio.sleep(args.seconds)
        summary["video_frames_sent"] = video.frames
        summary["audio_ms_sent"] = audio.pts * 1000 // SineAudio.RATE
        summary["delete_status"] = await common.delete(location)
    finally:
        await pc.close()
    common.dump(summary)
    return 0 if summary.get("connection") == "connected" else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--connect-timeout", type=float, default=10)
    p.add_argument("--datachannel", action="store_true")
    p.add_argument("--start-when", default=None)
    p.add_argument("--keyframe-every", type=float, default=0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    common.setup_logging(args.verbose)
    waiting = 300 if args.start_when else 0
    common.run(lambda: main(args), deadline_s=args.seconds + args.connect_timeout + 30 + waiting)
