"""Resolution and aspect-ratio tables.

Ratios are height / width written with two decimals (Open-Sora's keys), e.g. "9:16" -> "0.56" -> 240x426 at 240p
(a landscape frame). The released tables are copied from the reference numbers (facts §9); the embedded CPU
default uses tables of the same shape scaled down to small pixel budgets (sizes snapped to multiples of 8 so the
VAE's 8x spatial compression divides them).
"""

from __future__ import annotations

import math

# ratio name -> key (H/W, 2 decimals)
ASPECT_RATIO_NAMES: dict[str, str] = {
    "3:8": "0.38", "9:21": "0.43", "12:25": "0.48", "1:2": "0.50", "9:17": "0.53", "27:50": "0.54",
    "9:16": "0.56", "5:8": "0.62", "2:3": "0.67", "3:4": "0.75", "1:1": "1.00", "4:3": "1.33",
    "3:2": "1.50", "16:9": "1.78", "17:9": "1.89", "2:1": "2.00", "50:27": "2.08",
}

# pixel budgets of the released resolutions
RELEASED_PIXELS: dict[str, int] = {
    "144p": 36864, "256": 65536, "240p": 102240, "360p": 230400, "512": 262144, "480p": 409920,
    "720p": 921600, "1024": 1048576, "1080p": 2073600, "2k": 3686400, "2048": 4194304, "2880": 8294400,
}

_KEYS = ["0.38", "0.43", "0.48", "0.50", "0.53", "0.54", "0.56", "0.62", "0.67", "0.75", "1.00", "1.33",
         "1.50", "1.78", "1.89", "2.00", "2.08"]
_RELEASED_ROWS = {  # (H, W) per key, in the order of _KEYS
    "144p": [(117, 312), (125, 291), (133, 277), (135, 270), (139, 262), (141, 260), (144, 256), (151, 241),
             (156, 234), (166, 221), (192, 192), (221, 165), (235, 156), (256, 144), (263, 139), (271, 135),
             (277, 132)],
    "240p": [(196, 522), (210, 490), (222, 462), (226, 452), (232, 438), (236, 436), (240, 426), (252, 404),
             (262, 393), (276, 368), (320, 320), (370, 278), (392, 262), (426, 240), (440, 232), (452, 226),
             (462, 222)],
    "360p": [(294, 784), (314, 732), (332, 692), (340, 680), (350, 662), (352, 652), (360, 640), (380, 608),
             (392, 588), (416, 554), (480, 480), (554, 416), (588, 392), (640, 360), (660, 350), (678, 340),
             (692, 332)],
    "480p": [(392, 1046), (420, 980), (444, 925), (452, 904), (466, 880), (470, 870), (480, 854), (506, 810),
             (522, 784), (554, 738), (640, 640), (740, 555), (784, 522), (854, 480), (880, 466), (906, 454),
             (924, 444)],
    "720p": [(588, 1568), (628, 1466), (666, 1388), (678, 1356), (698, 1318), (706, 1306), (720, 1280),
             (758, 1212), (784, 1176), (832, 1110), (960, 960), (1108, 832), (1176, 784), (1280, 720),
             (1320, 698), (1358, 680), (1386, 666)],
}
RELEASED_TABLES: dict[str, dict[str, tuple[int, int]]] = {
    res: dict(zip(_KEYS, rows)) for res, rows in _RELEASED_ROWS.items()
}


def ratio_key(name_or_key: str) -> str:
    """'9:16' or '0.56' -> '0.56'; an unknown ratio raises a ValueError listing the valid names."""
    if name_or_key in ASPECT_RATIO_NAMES:
        return ASPECT_RATIO_NAMES[name_or_key]
    if name_or_key in _KEYS:
        return name_or_key
    raise ValueError(f"unknown aspect ratio {name_or_key!r}; valid: {', '.join(ASPECT_RATIO_NAMES)}")


def scaled_table(pixels: int, ratios: list[str] | None = None, multiple: int = 8) -> dict[str, tuple[int, int]]:
    """A table of the released shape for a small pixel budget: H = sqrt(pixels * r), W = sqrt(pixels / r),
    each rounded to a multiple of ``multiple``."""
    keys = [ratio_key(r) for r in ratios] if ratios else list(_KEYS)
    table = {}
    for key in keys:
        r = float(key)
        h = max(multiple, round(math.sqrt(pixels * r) / multiple) * multiple)
        w = max(multiple, round(math.sqrt(pixels / r) / multiple) * multiple)
        table[key] = (h, w)
    return table


def closest_ratio_key(height: int, width: int, keys: list[str]) -> str:
    """The table key closest to height/width."""
    r = height / width
    return min(keys, key=lambda k: abs(float(k) - r))
