"""The example job functions in workers/: image resizing, called like a worker
calls them (an object with ``data``)."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image, ImageDraw

from tests.helpers import ROOT
from workers import image


def png(width: int, height: int, mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), "red").save(out, "PNG")
    return out.getvalue()


def test_image_resize_and_thumbnail() -> None:
    out = image.resize(SimpleNamespace(data=image.envelope(30, 10, png(100, 100))))
    assert Image.open(io.BytesIO(out)).size == (30, 10)
    out = image.thumbnail(SimpleNamespace(data=image.envelope(50, 50, png(200, 100), "jpeg")))
    img = Image.open(io.BytesIO(out))
    assert img.format == "JPEG" and img.size == (50, 25)


@pytest.mark.parametrize(
    "bad", [b"no header", b"0x10\n" + png(2, 2), b"10x10 gif\n", b"10x10\nnot an image"]
)
def test_image_refuses_bad_envelopes(bad: bytes) -> None:
    with pytest.raises(ValueError):
        image.resize(SimpleNamespace(data=bad))


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"", "no image after the header line"),
        (b"hello", "not an image Pillow can read: unknown format"),
        (b"%PDF-1.4\n", "not an image Pillow can read: unknown format"),
    ],
)
def test_image_says_plainly_what_is_wrong_with_the_picture(body: bytes, said: str) -> None:
    # The client read "cannot identify image file <_io.BytesIO object at 0x7ff04214d4e0>":
    # an address in the worker's memory, and no word that nothing came after the header.
    with pytest.raises(ValueError) as refused:
        image.resize(SimpleNamespace(data=b"10x10\n" + body))
    assert str(refused.value) == said


@pytest.mark.parametrize(
    ("head", "said"),
    [
        (b"0x10", "size 0x10: each side must be 1..10000"),
        (b"-5x10", "size -5x10: each side must be 1..10000"),
        (b"1000000000x10", "size 1000000000x10: each side must be 1..10000"),
        (b"10x10 jpeg 0", "quality 0: must be 1..100"),
        (b"10x10 jpeg 101", "quality 101: must be 1..100"),
    ],
)
def test_image_names_the_size_or_quality_out_of_range(head: bytes, said: str) -> None:
    # Each read "size must be 1..10000 per side and quality 1..100", whichever was wrong.
    with pytest.raises(ValueError) as refused:
        image.resize(SimpleNamespace(data=head + b"\n" + png(4, 4)))
    assert str(refused.value) == said


@pytest.mark.parametrize("source", ["PNG", "JPEG", "GIF", "WEBP", "TIFF"])
def test_image_says_so_when_the_header_line_was_forgotten(source: str) -> None:
    # A PHP application that sent the upload as it came, no size line before it, read
    # "bad header b'\\x89PNG\\r': want ..." for a PNG, and for a JPEG "payload must start
    # with a line ...": nothing said that the image itself had come first.
    picture = io.BytesIO()
    Image.new("RGB", (40, 30), "teal").save(picture, source)
    with pytest.raises(ValueError, match=f"no header line: the payload starts with a {source}"):
        image.resize(SimpleNamespace(data=picture.getvalue()))


@pytest.mark.parametrize("function", [image.resize, image.thumbnail])
def test_image_refuses_a_picture_wider_than_max_side_before_decoding_it(function) -> None:
    # MAX_SIDE is the guard against decompression bombs: an input past it was decoded all
    # the same (Pillow only refuses past twice MAX_IMAGE_PIXELS), so a 0.4 MB PNG of
    # 100000x1000 grew the worker by 800 MB, and one of 14000x14000 by 1.5 GB.
    wide = png(image.MAX_SIDE + 1, 8, "RGB")
    with pytest.raises(ValueError, match=f"10001x8.*at most {image.MAX_SIDE}"):
        function(SimpleNamespace(data=image.envelope(10, 10, wide)))


def grey_png_of_zeros(width: int, height: int) -> bytes:
    """A PNG whose pixels are all 0, compressed as it is written: a picture far larger
    decoded than sent, made without ever holding it decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    packer, row = zlib.compressobj(9), bytes(1 + width)  # each row: filter byte, then grey
    rows = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def test_image_refuses_a_picture_in_an_icon_before_decoding_it() -> None:
    # An ICO's header gives the size of its entry, not of the PNG inside, which Pillow
    # decodes as it opens the icon: the check of the size came after 100 MB (600 MB for a
    # colour one at twice MAX_SIDE squared, Pillow's own limit) had been taken.
    inner = grey_png_of_zeros(image.MAX_SIDE + 1, image.MAX_SIDE + 1)
    icon = struct.pack("<HHH", 0, 1, 1) + struct.pack(
        "<BBBBHHII", 0, 0, 0, 0, 1, 32, len(inner), 22
    )
    payload = image.envelope(10, 10, icon + inner)
    # VmHWM, the peak of this process's own memory: ru_maxrss keeps the parent's peak
    # across the exec (vfork), so under a large pytest worker it read 494 MB for nothing.
    measure = (
        "import re, sys, types; from workers import image\n"
        "try:\n    image.resize(types.SimpleNamespace(data=sys.stdin.buffer.read()))\n"
        "except ValueError as e:\n    print(e)\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())\n"
        "print(int(hwm.group(1)) // 1024)"
    )
    run = subprocess.run(
        [sys.executable, "-c", measure], input=payload, capture_output=True, cwd=ROOT, check=True
    )
    refusal, peak_mb = run.stdout.decode().splitlines()
    assert "exceeds limit" in refusal and int(peak_mb) < 80, run.stdout


def jpeg2000_declaring(side: int) -> bytes:
    """A JPEG 2000 codestream of a few hundred bytes whose header (SIZ) says side x side."""
    small = io.BytesIO()
    Image.new("RGBA", (16, 16), "red").save(small, "JPEG2000", no_jp2=True)
    stream = small.getvalue()
    at = stream.index(b"\xff\x51") + 6  # SIZ: marker, Lsiz, Rsiz, then Xsiz Ysiz .. YTsiz
    fields = struct.pack(">IIIIII", side, side, 0, 0, side, side)
    return stream[:at] + fields + stream[at + len(fields) :]


# The worker's own filter of it is set once a process, and pytest resets filters per test.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_refuses_a_jpeg2000_picture_that_its_decoder_would_take_past_the_budget() -> None:
    # openjpeg decodes into 32 bits a channel: 25 bytes a pixel at the peak, where the
    # memory model (and the example config's kill_rss_mb) says 16. A JPEG 2000 file of a
    # few KB declaring 10000x10000 took the worker to 2.5 GB.
    Image.init()
    if "JPEG2000" not in Image.OPEN:
        pytest.skip("this Pillow reads no JPEG 2000")
    budget = image.MAX_SIDE**2 * image.PEAK_BYTES_PER_PIXEL
    most = budget // 25
    with pytest.raises(ValueError, match=f"8100x8100: a JPEG2000 picture at most {most} pixels"):
        image.resize(SimpleNamespace(data=image.envelope(10, 10, jpeg2000_declaring(8100))))
    out = image.resize(SimpleNamespace(data=image.envelope(8, 8, jpeg2000_declaring(16))))
    assert Image.open(io.BytesIO(out)).size == (8, 8)


def test_image_never_hands_postscript_to_ghostscript(tmp_path: Path) -> None:
    # Pillow "reads" EPS by running Ghostscript on it: any local user's PostScript was run
    # by the farm's worker wherever gs is installed (its -dSAFER has been escaped often).
    ran = tmp_path / "gs-ran"
    gs = tmp_path / "gs"
    gs.write_text(f'#!/bin/sh\necho "$@" >> {ran}\nexit 1\n')
    gs.chmod(0o755)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n%%EOF\n"
    attempt = (
        "import sys, types; from workers import image\n"
        "try:\n    image.resize(types.SimpleNamespace(data=sys.stdin.buffer.read()))\n"
        "except ValueError as e:\n    print(e)\n"
    )
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(
        [sys.executable, "-c", attempt],
        input=image.envelope(5, 5, eps),
        capture_output=True,
        cwd=ROOT,
        env=env,
        check=True,
    )
    assert not ran.exists(), ran.read_text()
    assert "not an image" in run.stdout.decode(), run.stdout + run.stderr


@pytest.mark.parametrize(
    ("mode", "source", "out"),
    [("CMYK", "JPEG", "RGB"), ("LAB", "TIFF", "RGB"), ("F", "TIFF", "RGB"), ("PA", "WEBP", "RGBA")],
)
def test_image_writes_a_png_of_any_mode_pillow_reads(mode: str, source: str, out: str) -> None:
    # Only JPEG output converted the picture to a mode it can write: a CMYK JPEG (print
    # work, Photoshop's) asked for as PNG, the default, failed with "OSError: cannot write
    # mode CMYK as PNG".
    picture = io.BytesIO()
    Image.new(mode, (40, 30)).save(picture, source)
    for function in (image.resize, image.thumbnail):
        result = function(SimpleNamespace(data=image.envelope(20, 15, picture.getvalue())))
        written = Image.open(io.BytesIO(result))
        assert (written.format, written.mode, written.size) == ("PNG", out, (20, 15))


@pytest.mark.parametrize(("mode", "source"), [("I;16", "PNG"), ("I;16", "TIFF"), ("I", "TIFF")])
def test_image_keeps_the_greys_of_a_16_bit_picture(mode: str, source: str) -> None:
    # Pillow's own conversion to 8 bits clips (30000 of 65535 becomes 255): a 16-bit grey
    # scan asked for as JPEG came out white, and a 32-bit one as PNG too.
    picture = io.BytesIO()
    Image.new(mode, (40, 30), 30000).save(picture, source)
    as_jpeg = image.resize(SimpleNamespace(data=image.envelope(20, 15, picture.getvalue(), "jpeg")))
    assert abs(Image.open(io.BytesIO(as_jpeg)).convert("L").getpixel((10, 7)) - 117) <= 2
    as_png = Image.open(
        io.BytesIO(image.resize(SimpleNamespace(data=image.envelope(20, 15, picture.getvalue()))))
    )
    assert (as_png.mode, as_png.getpixel((10, 7))) == ("I;16", 30000)


def logo(mode: str) -> bytes:
    """A red disc on a transparent ground, as a PNG of ``mode`` (P: a tRNS palette entry)."""
    picture = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    ImageDraw.Draw(picture).ellipse((30, 30, 70, 70), fill=(255, 0, 0, 255))
    out = io.BytesIO()
    if mode == "P":
        picture.convert("P").save(out, "PNG", transparency=0)
    elif mode == "RGB":  # a colour key: black is transparent
        picture.convert("RGB").save(out, "PNG", transparency=(0, 0, 0))
    else:
        picture.convert(mode).save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB"])
def test_image_puts_a_transparent_picture_on_white_as_jpeg(mode: str) -> None:
    # JPEG has no alpha: Pillow's conversion dropped it, and what the transparent pixels
    # held showed -- a logo's transparent ground came out black.
    assert Image.open(io.BytesIO(logo(mode))).has_transparency_data
    out = image.resize(SimpleNamespace(data=image.envelope(50, 50, logo(mode), "jpeg")))
    shown = Image.open(io.BytesIO(out)).convert("RGB")
    assert min(shown.getpixel((3, 3))) > 245, shown.getpixel((3, 3))  # the ground: white
    assert min(shown.getpixel((25, 25))) < 100  # the disc: still there (red, or its grey)


@pytest.mark.parametrize(("mode", "keeps"), [("P", "RGBA"), ("RGB", "RGBA"), ("LA", "LA")])
def test_image_keeps_a_transparent_ground_in_a_png(mode: str, keeps: str) -> None:
    out = image.thumbnail(SimpleNamespace(data=image.envelope(50, 50, logo(mode))))
    written = Image.open(io.BytesIO(out))
    assert written.mode == keeps and written.getpixel((3, 3))[-1] == 0
    assert written.getpixel((25, 25))[-1] == 255


@pytest.mark.parametrize("mode", ["P", "1"])
@pytest.mark.parametrize("function", [image.resize, image.thumbnail])
def test_image_averages_a_palette_or_1_bit_picture_as_it_shrinks(mode: str, function) -> None:
    # Pillow resizes modes P and 1 by nearest neighbour whatever is asked: a GIF's or a
    # pngquant'ed PNG's thin black-and-white lines, shrunk 4 times, came out all white
    # (a scan's text in 1 bit lost strokes), where a grey picture comes out mid grey.
    stripes = Image.new("L", (400, 400), 0)
    draw = ImageDraw.Draw(stripes)
    for x in range(0, 400, 2):
        draw.line((x, 0, x, 400), fill=255)
    source = io.BytesIO()
    stripes.convert(mode).save(source, "PNG")
    out = function(SimpleNamespace(data=image.envelope(100, 100, source.getvalue())))
    grey = Image.open(io.BytesIO(out)).convert("L").getpixel((50, 50))
    assert 100 < grey < 156, grey


@pytest.mark.parametrize("source", ["GIF", "PNG", "WEBP", "TIFF"])
def test_image_gives_an_animation_s_first_frame_at_once(source: str) -> None:
    # 500 frames of a few bytes each: only the first is decoded, whatever the count.
    frames = [Image.new("RGB", (32, 32), (i % 256, 255 - i % 256, 0)) for i in range(500)]
    animation = io.BytesIO()
    frames[0].save(animation, source, save_all=True, append_images=frames[1:])
    out = image.thumbnail(SimpleNamespace(data=image.envelope(16, 16, animation.getvalue())))
    still = Image.open(io.BytesIO(out))
    assert getattr(still, "n_frames", 1) == 1 and still.convert("RGB").getpixel((8, 8))[0] < 8


def test_image_is_turned_as_its_exif_orientation_says_before_it_is_resized() -> None:
    # A phone's portrait photo is stored landscape with an EXIF Orientation tag; the output
    # keeps no EXIF, so unturned its thumbnail showed on its side, and resize stretched it.
    photo = Image.new("RGB", (40, 20), "red")
    photo.paste("blue", (0, 0, 20, 20))  # left half blue: on top once turned a quarter right
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to show
    stored = io.BytesIO()
    photo.save(stored, "JPEG", exif=exif)
    out = image.thumbnail(SimpleNamespace(data=image.envelope(100, 100, stored.getvalue())))
    shown = Image.open(io.BytesIO(out)).convert("RGB")
    assert shown.size == (20, 40)
    top, bottom = shown.getpixel((10, 5)), shown.getpixel((10, 35))
    assert top[2] > 200 > top[0] and bottom[0] > 200 > bottom[2]  # blue above, red below


def test_importing_the_image_module_leaves_pillow_s_limits_to_the_importer() -> None:
    # A client imports workers.image for envelope(); its own Pillow must keep Pillow's
    # limit (a 120 Mpx picture of its own opened) and its DecompressionBombWarning.
    probe = (
        "from PIL import Image; before = Image.MAX_IMAGE_PIXELS\n"
        "import warnings; filters = list(warnings.filters)\n"
        "from workers import image\n"
        "print(Image.MAX_IMAGE_PIXELS == before, warnings.filters == filters)"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, cwd=ROOT, check=True)
    assert run.stdout.decode().split() == ["True", "True"]


PEAK_OF_A_RESIZE = (
    "import gc, re, sys, types; from workers import image\n"
    "payload = sys.stdin.buffer.read(); gc.collect()\n"
    "kb = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read())[1])\n"
    "open('/proc/self/clear_refs', 'w').write('5')  # VmHWM from here: not the imports\n"
    "before = kb('VmRSS')\n"
    "image.resize(types.SimpleNamespace(data=payload))\n"
    "print((kb('VmHWM') - before) * 1024)"
)


@pytest.mark.parametrize("source", ["PNG", "WEBP", "AVIF"])
def test_image_peak_memory_is_what_the_worker_says_per_pixel(source: str) -> None:
    # The costliest legal job (RGBA, to one pixel short of its own size: both passes of
    # the resample run), at 2000x2000: the same copies as at MAX_SIDE, in 1/25 the memory.
    # A WebP or AVIF file kept its decoder, and its frame, beside the picture: 24.5 bytes a
    # pixel, so a legal 10000x10000 WebP took 2.4 GB and was killed by kill_rss_mb.
    Image.init()
    if source not in Image.SAVE:
        pytest.skip(f"this Pillow writes no {source}")
    side = 2000
    picture = io.BytesIO()
    Image.new("RGBA", (side, side), "red").save(picture, source)
    payload = image.envelope(side - 1, side - 1, picture.getvalue())
    run = subprocess.run(
        [sys.executable, "-c", PEAK_OF_A_RESIZE],
        input=payload,
        capture_output=True,
        cwd=ROOT,
        check=True,
    )
    per_pixel = int(run.stdout) / side**2
    # Above the model by a copy (4 bytes a pixel): the model, and the example config that
    # rests on it, are wrong. Here 17.7 (the encoder's buffers weigh more on a small
    # picture); 16.1 at MAX_SIDE. Far below it: the worker shed a copy, lower the model.
    assert 0.85 * image.PEAK_BYTES_PER_PIXEL < per_pixel < 1.2 * image.PEAK_BYTES_PER_PIXEL


def test_example_config_lets_the_image_pools_run_their_largest_legal_job() -> None:
    # kill_rss_mb = 768 (and thumbnail's default, 1.5 x max_rss_mb) failed every legal
    # resize of a 10000x10000 RGBA picture, which peaks at 1.5 GiB: the worst job, two
    # copies of the largest payload (as sent, and its body split from the header) and the
    # worker's own interpreter with farm and Pillow (29 MiB measured; 64 allowed).
    from farm import config
    from farm.protocol.codec import DEFAULT_MAX_PACKET

    mib = 1 << 20
    need = (image.MAX_SIDE**2 * image.PEAK_BYTES_PER_PIXEL + 2 * DEFAULT_MAX_PACKET) / mib + 64
    pools = config.load(ROOT / "systemd" / "farm.toml").functions
    image_pools = {
        name: pool.kill_rss_mb
        for name, pool in pools.items()
        if str(getattr(pool, "target", "")).startswith("workers.image:")
    }
    assert set(image_pools) == {"resize", "thumbnail"}
    assert all(kill is not None and kill > need for kill in image_pools.values()), (
        image_pools,
        need,
    )
