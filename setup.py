"""The compiled fast path is optional: without a C compiler the package installs and runs in pure Python."""
from setuptools import Extension, setup

# One source file per Python module the compiled code mirrors (see sensor/_fast/fast.h and sensor/compiled.py).
SOURCES = [
    f"sensor/_fast/{name}.c"
    for name in (
        "module", "text", "records", "dns", "tls", "packet", "ecs", "redact", "pcap", "select", "share", "http", "quic",
        "handshake", "phi", "detect",
    )
]

setup(
    ext_modules=[
        Extension("sensor._fast", SOURCES, depends=["sensor/_fast/fast.h"], libraries=["m"], optional=True)
    ]
)
