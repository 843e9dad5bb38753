"""A GStreamer webrtcbin WHIP publisher, as Debian's `whip-client` builds it: VP8 + Opus,
bundle-policy max-bundle (the second m-line bundle-only), RSA certificate, no MID header
extension, candidates in the offer (non-trickle).

Signaling goes through the test: this prints the offer between `OFFER` and `END` lines on
stdout, reads the answer from stdin up to an `END` line, then publishes for SECONDS and prints
`STATE ice=<ice state> pc=<connection state>` once a second. Debian 12's `whip-client`
binary itself aborts at start ("libsoup2 symbols detected"), hence webrtcbin driven from Python
(python3-gi), with the same offer shape.

With `--codec h264` the video is x264 in constrained baseline (profile-level-id 42c01f,
packetization-mode 1, SPS/PPS before every IDR); `--codec h264-high` is x264's High profile
(64001f). x264enc is in gstreamer1.0-plugins-ugly.

usage: python3 whip_publish.py SECONDS [--codec vp8|h264|h264-high]
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

args = argparse.ArgumentParser()
args.add_argument("seconds", type=int)
args.add_argument("--codec", choices=["vp8", "h264", "h264-high"], default="vp8")
args = args.parse_args()
SECONDS = args.seconds


def h264(profile, preset):
    # config-interval=-1: SPS/PPS with every IDR, so a subscriber joining late can decode from
    # its first keyframe; key-int-max=30 gives it one every 2 s at 15 fps. rtph264pay writes
    # profile-level-id from the SPS (x264 says constrained baseline as 42c0.., not the
    # browsers' 42e0..), and webrtcbin copies the payloader's caps into the offer's a=fmtp.
    # ultrafast leaves out every High tool, after which x264 signals Baseline whatever the
    # caps ask, hence superfast for High.
    return (
        f"x264enc tune=zerolatency speed-preset={preset} key-int-max=30 bitrate=500 ! "
        f"video/x-h264,profile={profile},level=(string)3.1 ! "
        "rtph264pay config-interval=-1 aggregate-mode=zero-latency pt=96 ! "
        "application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000"
    )


VIDEO = {
    "vp8": "vp8enc deadline=1 ! rtpvp8pay pt=96 ! "
    "application/x-rtp,media=video,encoding-name=VP8,payload=96",
    "h264": h264("constrained-baseline", "ultrafast"),
    "h264-high": h264("high", "superfast"),
}[args.codec]

Gst.init(None)
pipe = Gst.parse_launch(
    "webrtcbin name=w bundle-policy=max-bundle "
    "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=15/1 ! "
    f"{VIDEO} ! w. "
    "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc ! "
    "rtpopuspay pt=97 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=97 ! w."
)
w = pipe.get_by_name("w")
loop = GLib.MainLoop()
sent = []


def state():
    ice = w.get_property("ice-connection-state").value_nick
    pc = w.get_property("connection-state").value_nick
    print(f"STATE ice={ice} pc={pc}", flush=True)
    return True


def on_gathering(*_):
    if sent or w.get_property("ice-gathering-state") != GstWebRTC.WebRTCICEGatheringState.COMPLETE:
        return
    sent.append(True)
    offer = w.get_property("local-description").sdp.as_text()
    print("OFFER", flush=True)
    print(offer.strip(), flush=True)
    print("END", flush=True)
    answer = []
    for line in sys.stdin:
        if line.strip() == "END":
            break
        answer.append(line.rstrip("\r\n"))
    ok, sdp = GstSdp.SDPMessage.new_from_text("\r\n".join(answer) + "\r\n")
    if ok != GstSdp.SDPResult.OK:
        print("ERROR answer does not parse", flush=True)
        loop.quit()
        return
    desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
    w.emit("set-remote-description", desc, None)
    GLib.timeout_add_seconds(1, state)
    GLib.timeout_add_seconds(SECONDS, loop.quit)


def on_offer(promise, _):
    reply = promise.get_reply()
    offer = reply.get_value("offer") if reply else None
    # webrtcbin asks for negotiation once per transceiver; an early ask gets no offer.
    if offer is not None:
        w.emit("set-local-description", offer, None)


def on_negotiation_needed(_):
    w.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer, None))


w.connect("on-negotiation-needed", on_negotiation_needed)
w.connect("notify::ice-gathering-state", on_gathering)
GLib.timeout_add_seconds(SECONDS + 30, loop.quit)  # never hang the test
pipe.set_state(Gst.State.PLAYING)
loop.run()
state()
pipe.set_state(Gst.State.NULL)
