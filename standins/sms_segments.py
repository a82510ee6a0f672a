"""How many SMS segments a body costs: Twilio reports it as `num_segments`."""
from __future__ import annotations

import math

GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENDED = set("^{}\\[~]|€\f")  # each costs an escape plus the character


def count_segments(body: str) -> int:
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in body):
        units = sum(2 if c in GSM7_EXTENDED else 1 for c in body)
        single, multi = 160, 153  # a concatenated part loses room to its UDH header
    else:
        units = len(body.encode("utf-16-le")) // 2  # UCS-2 counts UTF-16 code units
        single, multi = 70, 67
    if units <= single:
        return 1
    return math.ceil(units / multi)
