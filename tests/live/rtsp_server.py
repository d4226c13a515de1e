"""A real RTSP server for tests: GStreamer's gst-rtsp-server serving a generated clip.

    /usr/bin/python3 tests/live/rtsp_server.py PORT [WIDTH HEIGHT FPS]

Serves rtsp://127.0.0.1:PORT/live: a moving test pattern (videotestsrc, the ball) with a running
clock drawn in, encoded with x264 (one key frame a second). One pipeline is shared by every
client. Run by Debian's Python, which has the GStreamer bindings (python3-gi,
gir1.2-gst-rtsp-server-1.0); tests start and kill it.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port = sys.argv[1]
    width, height, fps = (int(v) for v in (sys.argv[2:5] if len(sys.argv) >= 5 else (320, 240, 10)))
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1 "
        f"! timeoverlay ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/live", factory)
    if server.attach(None) == 0:
        sys.exit(f"could not listen on 127.0.0.1:{port}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
