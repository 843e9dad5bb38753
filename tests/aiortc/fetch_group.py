#!/usr/bin/env python3
"""GET a stream's cached group (`/v1/streams/{room}/{stream}/fetch`) and decode it with
FFmpeg's decoders (PyAV, as aiortc installs it): prints one JSON line with the HTTP status,
the response's X-Switchyard-* headers, and what the decoder made of the file (frames
decoded, the first frame's size and whether it was a keyframe, the widest frame, decoder
errors). A VP9 superframe of several spatial layers decodes as one frame per layer.

Usage: fetch_group.py URL [--out FILE]
"""

import argparse
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request

import av


def decode(path, container):
    fmt = "h264" if container == "video/h264" else "ivf"
    out = {"frames_decoded": 0, "errors": []}
    try:
        with av.open(path, format=fmt) as c:
            stream = c.streams.video[0]
            out["decoder"] = stream.codec_context.name
            for packet in c.demux(stream):
                try:
                    for frame in packet.decode():
                        if out["frames_decoded"] == 0:
                            out["first_key_frame"] = bool(frame.key_frame)
                            out["width"] = frame.width
                            out["height"] = frame.height
                        out["max_width"] = max(out.get("max_width", 0), frame.width)
                        out["frames_decoded"] += 1
                except av.error.FFmpegError as e:
                    out["errors"].append(str(e))
    except av.error.FFmpegError as e:
        out["errors"].append(f"open: {e}")
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    result = {}
    try:
        with urllib.request.urlopen(args.url, timeout=10) as r:
            body = r.read()
            result["status"] = r.status
            headers = r.headers
    except urllib.error.HTTPError as e:
        result["status"] = e.code
        result["error"] = e.read().decode(errors="replace")
        print(json.dumps(result))
        return
    result["content_type"] = headers.get("Content-Type")
    result["bytes"] = len(body)
    for h in ("codec", "track", "frames", "skipped-frames", "packets"):
        v = headers.get(f"X-Switchyard-{h}")
        result[h.replace("-", "_")] = int(v) if v and v.isdigit() else v
    path = args.out
    if path is None:
        fd, path = tempfile.mkstemp(suffix=".bin")
        os.close(fd)
    with open(path, "wb") as f:
        f.write(body)
    result.update(decode(path, result["content_type"]))
    if args.out is None:
        os.unlink(path)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
