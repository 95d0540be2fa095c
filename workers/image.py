"""Image functions: ``resize`` (exact size) and ``thumbnail`` (fit inside a box).

Input envelope -- one ASCII header line, then the image file's bytes::

    WIDTHxHEIGHT [png|jpeg] [QUALITY]\\n<image bytes: any format Pillow reads but EPS>

e.g. ``b"320x200 jpeg 85\\n" + open("cat.png", "rb").read()``. The format
defaults to png, the JPEG quality to 85. The output is the encoded image.
A photo is turned as its EXIF Orientation says first (WIDTHxHEIGHT is the size as shown).
A PNG keeps transparency (a palette or colour key becomes an alpha channel); a JPEG has
none, so a transparent picture is laid on white. A palette or 1-bit picture is resized in
full colour (grey for 1-bit), as Pillow resamples only those, and written so: such a PNG
comes out several times larger than its input. An animation (GIF, APNG, WebP) or a file
of several pages (TIFF) gives its first frame alone, a still picture.
``envelope()`` builds the input for clients. Bad input raises ``ValueError``,
which the worker reports as the job's exception: among it a picture past MAX_SIDE a
side, or a JPEG 2000 one past 64 Mpx (8000x8000), whose decoder takes more a pixel.
"""

from __future__ import annotations

import functools
import io
import warnings
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["resize", "thumbnail", "envelope", "MAX_SIDE", "PEAK_BYTES_PER_PIXEL"]

#: Largest side asked for or accepted: a guard against decompression bombs.
MAX_SIDE = 10_000
#: A job's working memory at most, per pixel of its input: an RGBA picture (4 bytes a
#: pixel) resized to nearly its own size is held as read, premultiplied for resampling
#: (Pillow's RGBa), resized across and then down -- four copies at once. At MAX_SIDE that
#: is 1.5 GiB (1552 MiB peak RSS measured, Pillow 13): a pool's kill_rss_mb below it fails
#: legal jobs (systemd/farm.toml's pools of this module allow for it). A format whose
#: decoder takes more (_DECODER_PEAK) is allowed fewer pixels, for the same peak.
PEAK_BYTES_PER_PIXEL = 16
_FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}
#: Where and how the formats most sent begin (WebP: "RIFF", its length, "WEBP"). No
#: header line matches: it starts with a digit, and no format it names holds "WEBP".
_MAGIC = (
    (0, b"\x89PNG", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"GIF8", "GIF"),
    (8, b"WEBP", "WEBP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
)
_PUT = "put 'WIDTHxHEIGHT [png|jpeg] [QUALITY]' and a newline before it (envelope())"
#: Bytes a pixel at the peak for formats whose decoder takes more than the resize does:
#: openjpeg decodes into 32 bits a channel (24.9 measured, RGBA). Such a picture may have
#: fewer pixels, so that the job stays within MAX_SIDE squared x PEAK_BYTES_PER_PIXEL.
_DECODER_PEAK = {"JPEG2000": 25}
#: Formats whose opened file holds a decoder with a frame of its own (to seek the next).
_KEEPS_ITS_DECODER = frozenset(("WEBP", "AVIF"))
#: The modes Pillow writes in each format and resamples (JPEG has no alpha); any other is
#: converted to RGB, or RGBA for a PNG of one with alpha.
_WRITES = {
    "PNG": frozenset(("L", "LA", "I;16", "I;16B", "RGB", "RGBA")),
    "JPEG": frozenset(("RGB", "L")),
}


@functools.cache
def _limit_pillow() -> None:
    """Pillow refuses a picture past twice MAX_IMAGE_PIXELS as it opens it, before decoding,
    and only warns below: MAX_SIDE squared is the refusal then. The side check in _open
    comes once Pillow has opened the file, which for some formats (an ICO's PNG inside)
    means decoded. Set at the first job, not at import: a client imports this module for
    ``envelope()``, and its own use of Pillow keeps Pillow's limits."""
    Image.MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE // 2
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)  # a 60 Mpx photo


def envelope(width: int, height: int, image: bytes, fmt: str = "png", quality: int = 85) -> bytes:
    """The job payload asking for ``image`` at ``width`` x ``height`` in ``fmt``."""
    return f"{width}x{height} {fmt} {quality}\n".encode() + image


def resize(job: Any) -> bytes:
    """Scale the image to exactly WIDTHxHEIGHT (the aspect ratio may change)."""
    size, fmt, quality, img = _open(job.data)
    return _encode(img.resize(size, Image.Resampling.LANCZOS), fmt, quality)


def thumbnail(job: Any) -> bytes:
    """Shrink the image to fit inside WIDTHxHEIGHT, keeping its aspect ratio."""
    size, fmt, quality, img = _open(job.data)
    img.thumbnail(size, Image.Resampling.LANCZOS)
    return _encode(img, fmt, quality)


def _open(data: bytes) -> tuple[tuple[int, int], str, int, Image.Image]:
    _limit_pillow()
    magic = next((name for at, sig, name in _MAGIC if data[at : at + len(sig)] == sig), None)
    if magic is not None:  # an upload sent as it came, a common slip
        raise ValueError(f"no header line: the payload starts with a {magic} image; {_PUT}")
    head, sep, body = bytes(data).partition(b"\n")
    if not sep or len(head) > 64:
        raise ValueError("payload must start with a line 'WIDTHxHEIGHT [png|jpeg] [QUALITY]'")
    fields = head.decode("ascii", "replace").split()
    try:
        width, height = (int(v) for v in fields[0].lower().split("x"))
        fmt = _FORMATS[fields[1].lower()] if len(fields) > 1 else "PNG"
        quality = int(fields[2]) if len(fields) > 2 else 85
    except (ValueError, KeyError, IndexError):
        want = "want 'WIDTHxHEIGHT [png|jpeg] [QUALITY]'"
        raise ValueError(f"bad header {head[:64]!r}: {want}") from None
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise ValueError(f"size {width}x{height}: each side must be 1..{MAX_SIDE}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality {quality}: must be 1..100")
    if not body:
        raise ValueError("no image after the header line")
    try:
        # reads the header only: the size, not the pixels
        # Image.Image, not the ImageFile open() gives: _unbound's copy replaces it below.
        img: Image.Image = Image.open(io.BytesIO(body), formats=_readable())
    except UnidentifiedImageError:  # its text names the BytesIO by its memory address
        raise ValueError("not an image Pillow can read: unknown format") from None
    except Exception as e:  # Pillow raises several types for undecodable input
        raise ValueError(f"not an image Pillow can read: {e}") from None
    if max(img.size) > MAX_SIDE:  # before decoding: Pillow only warns below 2 x its limit
        w, h = img.size
        raise ValueError(f"the image is {w}x{h}: at most {MAX_SIDE} pixels per side")
    cost = _DECODER_PEAK.get(str(img.format), PEAK_BYTES_PER_PIXEL)
    if img.width * img.height * cost > MAX_SIDE**2 * PEAK_BYTES_PER_PIXEL:
        most = MAX_SIDE**2 * PEAK_BYTES_PER_PIXEL // cost
        w, h = img.size
        raise ValueError(f"the image is {w}x{h}: a {img.format} picture at most {most} pixels")
    try:
        img.load()
        # Turned as shown: the output keeps no EXIF, so a phone's portrait photo (stored
        # landscape, with an Orientation tag) would come out on its side.
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as e:
        raise ValueError(f"not an image Pillow can read: {e}") from None
    if img.format in _KEEPS_ITS_DECODER:
        img = _unbound(img)
    return (width, height), fmt, quality, _writable(img, fmt)


def _unbound(img: Image.Image) -> Image.Image:
    """A copy of the picture without the file's decoder, which (with its own canvas, for
    the next frame) lived as long as the file: 24.5 bytes a pixel in all, a legal
    10000x10000 WebP 2.4 GB, past kill_rss_mb. The copy, made while the decoder still
    lives, costs less than the resize after; the file goes once the caller drops it."""
    copy = img.copy()
    img.close()
    return copy


@functools.cache
def _readable() -> tuple[str, ...]:
    """The formats Pillow may open: all it knows but EPS, which it reads by running
    Ghostscript on the file -- any caller's PostScript, run by the worker."""
    Image.init()
    return tuple(name for name in Image.OPEN if name != "EPS")


def _writable(img: Image.Image, fmt: str) -> Image.Image:
    """``img`` in a mode ``fmt`` writes (e.g. a CMYK JPEG asked for as PNG) and that
    resamples, before resizing."""
    # Pillow resizes modes 1 and P by nearest neighbour whatever filter is asked: a GIF's
    # or a 1-bit scan's thin lines vanished as it shrank. A colour key (a PNG's tRNS) is
    # lost by resampling, so it becomes an alpha channel too.
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("P", "PA") or (img.mode in ("L", "RGB") and "transparency" in img.info):
        keyed = img.has_transparency_data
        img = img.convert(("LA" if img.mode == "L" else "RGBA") if keyed else "RGB")
    if fmt == "JPEG" and img.mode.endswith(("A", "a")):  # LA, PA, RGBA, RGBa (not LAB)
        # JPEG has no alpha, and dropping it showed what the transparent pixels held: a
        # logo's ground came out black. Laid on white, as a browser shows it on a page.
        grey = img.mode in ("LA", "La")
        if img.mode not in ("LA", "RGBA"):  # convert() copies even to the same mode
            img = img.convert("LA" if grey else "RGBA")
        ground = Image.new("L" if grey else "RGB", img.size, "white")
        ground.paste(img, mask=img.getchannel("A"))
        return ground
    if img.mode in _WRITES[fmt]:
        return img
    if img.mode.startswith("I"):  # 16-bit grey (32 in a TIFF): Pillow's own cut clips
        if fmt == "PNG":
            return img.convert("I;16")  # PNG keeps 16 bits
        return img.convert("I").point(lambda v: v / 256).convert("L")  # 30000 is 117, not 255
    alpha = fmt == "PNG" and img.mode.endswith(("A", "a"))  # LA, PA, RGBa (not LAB)
    return img.convert("RGBA" if alpha else "RGB")


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return out.getvalue()
