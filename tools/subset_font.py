"""Build the dashboard's bundled font: Noto Sans CJK SC, cut down to what it shows.

The dashboard works offline, so it serves its own font rather than trusting
the operator's machine to have a Chinese one. The full font is 16 MB; this
keeps Latin, CJK punctuation, the 3,755 level-1 hanzi of GB 2312 (the common
characters of place names, addresses and notes) and every character in the
dashboard's own files and the demo fleet. A character outside the subset falls
back to the system fonts named after it in ``app.css``.

    .venv/bin/python tools/subset_font.py [--source /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc]

Needs fonttools and brotli (the ``dev`` extra) and Debian's fonts-noto-cjk.
The output is committed; run this again when the dashboard gains new text.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fontTools import subset
from fontTools.ttLib import TTCollection

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "cloud" / "dashboard" / "static"
OUT = STATIC / "fonts" / "NotoSansSC-subset.woff2"
SOURCE = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
TEXT_FILES = [
    *sorted(STATIC.glob("*.js")),
    *sorted(STATIC.glob("*.html")),
    *sorted(STATIC.glob("*.geojson")),
    REPO / "simulators" / "fleet.py",
    *sorted((REPO / "firmware-config").rglob("*.yaml")),
]


def gb2312_level1() -> str:
    """The 3,755 level-1 hanzi: rows 16-55 of GB 2312 (bytes 0xB0A1-0xD7F9)."""
    chars = []
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.append(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:
                continue  # the gaps at the end of row 55
    return "".join(chars)


def wanted() -> str:
    ascii_ = "".join(chr(c) for c in range(0x20, 0x7F))
    cjk_punctuation = range(0x3000, 0x3040)
    fullwidth = range(0xFF01, 0xFF5F)
    punctuation = "".join(chr(c) for c in [*cjk_punctuation, *fullwidth])
    symbols = "·–—‘’“”…←→↑↓°℃×÷≤≥‰№"
    files = "".join(p.read_text(encoding="utf-8") for p in TEXT_FILES if p.exists())
    return "".join(sorted(set(ascii_ + punctuation + symbols + gb2312_level1() + files)))


def sc_index(source: Path) -> int:
    for i, font in enumerate(TTCollection(str(source)).fonts):
        if font["name"].getDebugName(4) == "Noto Sans CJK SC":
            return i
    raise SystemExit(f"{source} has no Noto Sans CJK SC face")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--source", type=Path, default=SOURCE)
    args = p.parse_args()
    text = wanted()
    options = subset.Options()
    options.flavor = "woff2"
    options.font_number = sc_index(args.source)
    options.layout_features = ["*"]
    options.name_IDs = ["*"]
    options.name_languages = ["*"]
    options.hinting = False
    options.desubroutinize = True  # smaller once compressed
    font = subset.load_font(str(args.source), options)
    sub = subset.Subsetter(options)
    sub.populate(text=text)
    sub.subset(font)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    subset.save_font(font, str(OUT), options)
    print(f"{OUT.relative_to(REPO)}: {len(text)} characters, {OUT.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
