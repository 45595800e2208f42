"""The demo dataset: every colour glyph of Debian's Noto Color Emoji font, rendered with
Pillow into PNGs, one folder per kind (faces, animals, food...). Real colour images that
install on a fresh machine with no hub download; ``vaegan prepare`` treats the result like
any user folder.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from vaegan.errors import VaeganError

FONT_PATHS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/local/share/fonts/NotoColorEmoji.ttf",
)
# (first, last, folder) by Unicode block; anything else goes to "symbols".
GROUPS = (
    (0x1F600, 0x1F64F, "faces"),
    (0x1F910, 0x1F92F, "faces"),
    (0x1F970, 0x1F97F, "faces"),
    (0x1F400, 0x1F43F, "animals"),
    (0x1F980, 0x1F9AF, "animals"),
    (0x1F330, 0x1F344, "plants"),  # before food: the food block starts inside this range
    (0x1F32D, 0x1F37F, "food"),
    (0x1F950, 0x1F96F, "food"),
    (0x1F680, 0x1F6FF, "transport"),
)
CANVAS = 128
GLYPH = 88  # the glyph fits inside the centre crop (0.75 * 128 = 96 px)


def find_font(explicit: str | None = None) -> Path:
    for p in [explicit] if explicit else FONT_PATHS:
        if p and Path(p).is_file():
            return Path(p)
    raise VaeganError(
        "Noto Color Emoji font not found; install it with 'apt-get install fonts-noto-color-emoji' "
        "(Debian/Ubuntu) or pass --font PATH to a NotoColorEmoji.ttf"
    )


def group_of(cp: int) -> str:
    return next((name for lo, hi, name in GROUPS if lo <= cp <= hi), "symbols")


def render(
    out_dir: str | Path,
    font_path: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> int:
    """Render the font's emoji into ``out_dir/<group>/u<codepoint>.png``; returns the count."""
    from fontTools.ttLib import TTFont

    path = find_font(font_path)
    codepoints = sorted(cp for cp in TTFont(path, lazy=True).getBestCmap() if cp >= 0x2000)[:limit]
    font = ImageFont.truetype(str(path), 109)  # CBDT colour bitmaps exist at 109 px only
    out_dir = Path(out_dir)
    written = 0
    for cp in tqdm(codepoints, desc="render emoji", unit="img", disable=not progress):
        glyph = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((8, 8), chr(cp), font=font, embedded_color=True)
        box = glyph.getbbox()
        if box is None:  # no colour bitmap for this code point
            continue
        glyph = glyph.crop(box)
        scale = GLYPH / max(glyph.size)
        glyph = glyph.resize(
            (max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))), Image.LANCZOS
        )
        tile = Image.new("RGBA", (CANVAS, CANVAS), (255, 255, 255, 255))
        tile.alpha_composite(glyph, ((CANVAS - glyph.width) // 2, (CANVAS - glyph.height) // 2))
        dest = out_dir / group_of(cp) / f"u{cp:05x}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tile.convert("RGB").save(dest)
        written += 1
    if not written:
        raise VaeganError(f"{path} yielded no colour glyphs")
    return written
