"""Puts images side by side on a grey background, top-aligned, for docs/figures.

    python3 scripts/side_by_side.py OUT.png A.png B.png [C.png ...]

Used for the IGM texture figures: the source texture next to what a model synthesized from
it at 256x256 and 512x512 (docs/igm.md). Needs Pillow (pip install pillow).
"""
import sys

from PIL import Image


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    out, paths = sys.argv[1], sys.argv[2:]
    images = [Image.open(p).convert("L") for p in paths]
    gap = 8
    width = sum(i.width for i in images) + gap * (len(images) + 1)
    height = max(i.height for i in images) + 2 * gap
    canvas = Image.new("L", (width, height), 128)
    x = gap
    for image in images:
        canvas.paste(image, (x, gap))
        x += image.width + gap
    canvas.save(out)


if __name__ == "__main__":
    main()
