"""Publish a synthetic VP8 video track and an Opus audio track to a WHIP endpoint for a
fixed time, then DELETE the session. Prints a JSON summary on stdout.

    whip_client.py URL --seconds N [--verbose]
"""

import argparse
import asyncio
import fractions
import math
import time

from array import array
from av import AudioFrame, VideoFrame
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

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


async def main(args) -> int:
    # No STUN server: the node is on loopback and gathering must not wait for the internet.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    video, audio = PatternVideo(), SineAudio()
    pc.addTransceiver(audio, direction="sendonly")
    pc.addTransceiver(video, direction="sendonly")
    summary = {"role": "whip"}
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
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    common.setup_logging(args.verbose)
    common.run(lambda: main(args), deadline_s=args.seconds + args.connect_timeout + 30)
