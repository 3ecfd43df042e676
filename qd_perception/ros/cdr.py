"""A minimal little-endian CDR (XCDR1, the ROS 2 wire format) writer for building output messages
as bytes, which ``Publisher.publish(bytes)`` sends unchanged.

Why: building a large message from Python objects (one object per ``Point``, per marker) and
letting rclpy convert and serialise them costs ~20 ms for 250 boxes' markers; composing the bytes
from pre-built per-marker templates with numpy-filled fields costs ~1 ms.

Alignment is relative to the start of the payload (after the 4-byte encapsulation header):
primitives of size n sit at offsets that are multiples of n. A template written at a given
``phase`` (its start offset modulo 8) is valid wherever it is placed at that phase.
"""

from __future__ import annotations

import struct

#: the encapsulation header of a little-endian CDR payload
CDR_LE_HEADER = b"\x00\x01\x00\x00"


class CdrWriter:
    """Appends CDR fields to a buffer that starts at payload offset ``phase`` (0..7)."""

    def __init__(self, phase: int = 0) -> None:
        self.phase = phase
        self.buf = bytearray()

    @property
    def offset(self) -> int:
        """Payload offset of the next byte (mod 8 is what matters)."""
        return self.phase + len(self.buf)

    def align(self, n: int) -> None:
        self.buf += b"\x00" * (-self.offset % n)

    def prim(self, fmt: str, *values: float | int) -> int:
        """Append primitives of one struct format char (``i I f d ?``); returns their position."""
        size = struct.calcsize("<" + fmt)
        self.align(size)
        at = len(self.buf)
        self.buf += struct.pack(f"<{len(values)}{fmt}", *values)
        return at

    def string(self, s: str) -> int:
        data = s.encode()
        at = self.prim("I", len(data) + 1)
        self.buf += data + b"\x00"
        return at

    def seq_len(self, n: int) -> int:
        return self.prim("I", n)


def pack_string(s: str, offset: int) -> bytes:
    """A CDR string placed at payload ``offset`` (alignment padding included)."""
    data = s.encode()
    return b"\x00" * (-offset % 4) + struct.pack("<I", len(data) + 1) + data + b"\x00"
