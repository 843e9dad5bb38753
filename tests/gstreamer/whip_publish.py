"""A GStreamer webrtcbin WHIP publisher, as Debian's `whip-client` builds it: VP8 + Opus,
bundle-policy max-bundle (the second m-line bundle-only), RSA certificate, no MID header
extension, candidates in the offer (non-trickle).

Signaling goes through the test: this prints the offer between `OFFER` and `END` lines on
stdout, reads the answer from stdin up to an `END` line, then publishes for SECONDS and prints
`STATE ice=<ice state> pc=<connection state>` once a second. Debian 12's `whip-client`
binary itself aborts at start ("libsoup2 symbols detected"), hence webrtcbin driven from Python
(python3-gi), with the same offer shape.

usage: python3 whip_publish.py SECONDS
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

SECONDS = int(sys.argv[1])

Gst.init(None)
pipe = Gst.parse_launch(
    "webrtcbin name=w bundle-policy=max-bundle "
    "videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=15/1 ! "
    "vp8enc deadline=1 ! rtpvp8pay pt=96 ! "
    "application/x-rtp,media=video,encoding-name=VP8,payload=96 ! w. "
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
