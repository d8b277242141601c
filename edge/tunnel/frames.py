"""yamux frame header: layout, types, flags (HashiCorp yamux spec, "Framing").

Every frame starts with a 12-byte header, all fields big-endian:

    Version (8 bits) | Type (8 bits) | Flags (16 bits) | StreamID (32 bits) | Length (32 bits)

Only data frames carry a payload (of `Length` bytes); for window updates the
length field is the window delta, for pings the opaque value, for go-away the
error code (spec, "Message Types").
"""
from __future__ import annotations

import struct

HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size  # 12

VERSION = 0  # spec, "Version": always 0

# spec, "Type"
TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3
TYPE_NAMES = {TYPE_DATA: "data", TYPE_WINDOW_UPDATE: "window_update", TYPE_PING: "ping", TYPE_GO_AWAY: "go_away"}

# spec, "Flags"
FLAG_SYN = 0x1
FLAG_ACK = 0x2
FLAG_FIN = 0x4
FLAG_RST = 0x8
KNOWN_FLAGS = FLAG_SYN | FLAG_ACK | FLAG_FIN | FLAG_RST

# spec, "Flow Control": every stream starts with a 256 KiB window.
INITIAL_WINDOW = 256 * 1024
MAX_UINT32 = 0xFFFFFFFF


def pack_header(ftype: int, flags: int, stream_id: int, length: int) -> bytes:
    return HEADER.pack(VERSION, ftype, flags, stream_id, length)
