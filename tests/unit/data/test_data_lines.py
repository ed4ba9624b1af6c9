"""Tests for recognizer.data.images.lines (manifests, loading, errors) and recognizer.data.batching."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recognizer.alphabet import Alphabet, UnknownSymbolError
from recognizer.data.batching import Batch, Collate, EpochBatchSampler
from recognizer.data.images.lines import DataError, LineDataset, Record, read_records

HEIGHT = 16


def write_png(path, width, height, background=255, ink=0, box=None):
    """A grayscale line image: uniform background, optional ink rectangle (x0, y0, x1, y1)."""
    arr = np.full((height, width), background, dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        arr[y0:y1, x0:x1] = ink
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)
    return arr


def write_float_tiff(path, arr):
    Image.fromarray(np.asarray(arr, dtype=np.float32), mode="F").save(path)


def tsv_dataset(tmp_path):
    """Two images under imgs/, listed by relative path in a TSV manifest with a header."""
    write_png(tmp_path / "imgs" / "a.png", 40, 20, box=(5, 5, 15, 15))  # resized to 32 × 16
    write_png(tmp_path / "imgs" / "b.png", 30, 16, background=255, ink=51, box=(0, 0, 3, 16))
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("image\ttext\nimgs/a.png\thello\n\nimgs/b.png\twörld x\n", encoding="utf-8")
    return manifest


# --------------------------------------------------------------------------- manifests


def test_tsv_manifest_with_header_and_relative_paths(tmp_path):
    records = read_records(tsv_dataset(tmp_path))
    assert records == [
        Record(id="imgs/a.png", path=tmp_path / "imgs" / "a.png", text="hello"),
        Record(id="imgs/b.png", path=tmp_path / "imgs" / "b.png", text="wörld x"),
    ]


def test_tsv_without_header_keeps_first_line(tmp_path):
    write_png(tmp_path / "a.png", 8, 16)
    manifest = tmp_path / "m.tsv"
    manifest.write_text("a.png\tfirst\n", encoding="utf-8")
    assert [r.text for r in read_records(manifest)] == ["first"]


def test_tsv_keeps_quotes_and_empty_transcripts(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text('a.png\t"quoted" text\nb.png\t\n', encoding="utf-8")
    assert [r.text for r in read_records(manifest)] == ['"quoted" text', ""]


def test_jsonl_manifest(tmp_path):
    manifest = tmp_path / "sub" / "m.jsonl"
    manifest.parent.mkdir()
    lines = [
        json.dumps({"id": "s1", "image": "x/a.png", "text": "abc"}),
        "",
        json.dumps({"image": "b.png", "text": "dé"}, ensure_ascii=False),
    ]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = read_records(manifest)
    assert records == [
        Record(id="s1", path=tmp_path / "sub" / "x" / "a.png", text="abc"),
        Record(id="b.png", path=tmp_path / "sub" / "b.png", text="dé"),
    ]


def test_kraken_folder(tmp_path):
    write_png(tmp_path / "line2.png", 20, 16)
    (tmp_path / "line2.gt.txt").write_text("second\r\n", encoding="utf-8")
    write_png(tmp_path / "line1.png", 20, 16)
    (tmp_path / "line1.gt.txt").write_text("first line\n", encoding="utf-8")
    np.save(tmp_path / "line3.npy", np.zeros((16, 4), dtype=np.float32))
    (tmp_path / "line3.gt.txt").write_text("third", encoding="utf-8")
    write_png(tmp_path / "stray.png", 20, 16)  # no transcript: not a sample
    records = read_records(tmp_path)
    assert [(r.id, r.path.name, r.text) for r in records] == [
        ("line1", "line1.png", "first line"),
        ("line2", "line2.png", "second"),
        ("line3", "line3.npy", "third"),
    ]


# --------------------------------------------------------------------------- loading


def test_items_shapes_values_and_widths(tmp_path):
    ds = LineDataset(read_records(tsv_dataset(tmp_path)), height=HEIGHT, invert=True)
    assert len(ds) == 2
    assert ds.ids == ["imgs/a.png", "imgs/b.png"]
    assert ds.texts == ["hello", "wörld x"]
    # a.png is 40 × 20 → height 16 keeps the aspect ratio: 40 * 16 / 20 = 32; b.png is already 16
    assert ds.widths == [32, 30]
    items = [ds[i] for i in range(len(ds))]
    for item, width in zip(items, ds.widths, strict=True):
        assert set(item) == {"id", "input", "text"}
        x = item["input"]
        assert x.dtype == torch.float32
        assert x.shape == (1, HEIGHT, width)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert items[0]["id"] == "imgs/a.png" and items[0]["text"] == "hello"

    b = items[1]["input"][0]  # not resized: exact values
    assert torch.all(b[:, 3:] == 0.0)  # inverted white background
    assert torch.allclose(b[:, :3], torch.tensor(1.0 - 51 / 255))  # inverted gray ink 51

    a = items[0]["input"][0]  # resized: ink box (5..15, 5..15) → about (4..12, 4..12)
    assert float(a[:, 20:].abs().max()) < 1e-6  # far from the ink: background stays ~0
    assert float(a[6:10, 6:10].min()) > 0.99  # centre of the ink: ~1


def test_no_invert_keeps_white_background(tmp_path):
    ds = LineDataset(read_records(tsv_dataset(tmp_path)), height=HEIGHT, invert=False)
    b = ds[1]["input"][0]
    assert torch.all(b[:, 3:] == 1.0)
    assert torch.allclose(b[:, :3], torch.tensor(51 / 255))


def test_resize_up_and_rgb_input(tmp_path):
    rgb = np.zeros((8, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red: L = 0.299 * 255 ≈ 76
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "r.png")
    (tmp_path / "r.gt.txt").write_text("r", encoding="utf-8")
    ds = LineDataset(read_records(tmp_path), height=HEIGHT, invert=False)
    assert ds.widths == [20]  # 10 * 16 / 8
    x = ds[0]["input"]
    assert x.shape == (1, HEIGHT, 20)
    expected = round(0.299 * 255) / 255
    assert torch.allclose(x, torch.tensor(expected), atol=1.5 / 255)


def test_widths_match_loaded_tensors_for_odd_ratios(tmp_path):
    sizes = [(37, 23), (5, 41), (101, 17), (1, 50), (64, 16)]
    for i, (w, h) in enumerate(sizes):
        write_png(tmp_path / f"l{i}.png", w, h)
        (tmp_path / f"l{i}.gt.txt").write_text("x", encoding="utf-8")
    np.save(tmp_path / "l9.npy", np.full((9, 14), 0.5))
    (tmp_path / "l9.gt.txt").write_text("y", encoding="utf-8")
    ds = LineDataset(read_records(tmp_path), height=HEIGHT)
    widths = ds.widths
    assert len(widths) == len(ds)
    for i in range(len(ds)):
        x = ds.load(i)
        assert x.shape == (1, HEIGHT, widths[i])
        assert widths[i] >= 1


def test_float_tiff_and_npy_inputs(tmp_path):
    arr = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    write_float_tiff(tmp_path / "f.tif", arr)
    (tmp_path / "f.gt.txt").write_text("f", encoding="utf-8")
    np.save(tmp_path / "g.npy", arr.astype(np.float64))
    (tmp_path / "g.gt.txt").write_text("g", encoding="utf-8")
    ds = LineDataset(read_records(tmp_path), height=2, invert=True)
    expected = torch.from_numpy(1.0 - arr).unsqueeze(0)
    assert torch.equal(ds.load(0), expected)
    assert torch.equal(ds.load(1), expected)


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("d.png", lambda a: Image.fromarray(a)),  # opens as I;16
        ("d.tif", lambda a: Image.frombytes("I;16B", (3, 2), a.astype(">u2").tobytes())),  # big-endian TIFF
        ("d.tif", lambda a: Image.fromarray(a.astype(np.int32))),  # Pillow's 32-bit integer mode I
    ],
)
def test_sixteen_bit_images_are_scaled_by_their_depth(tmp_path, name, image):
    arr = np.array([[0, 65535, 32768]], dtype=np.uint16).repeat(2, axis=0)
    image(arr).save(tmp_path / name)
    (tmp_path / "d.gt.txt").write_text("d", encoding="utf-8")
    x = LineDataset(read_records(tmp_path), height=2, invert=False).load(0)
    assert torch.allclose(x[0, 0], torch.tensor([0.0, 1.0, 32768 / 65535]))


def test_cache_returns_identical_tensors(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(20, 40), dtype=np.uint8)
    Image.fromarray(arr, mode="L").save(tmp_path / "n.png")
    (tmp_path / "n.gt.txt").write_text("noise", encoding="utf-8")
    records = read_records(tmp_path)
    cached = LineDataset(records, height=HEIGHT, cache=True)
    first = cached[0]["input"]
    (tmp_path / "n.png").unlink()  # the second load must come from memory
    second = cached[0]["input"]
    assert torch.equal(first, second)
    assert first.dtype == torch.float32 and first.shape == (1, HEIGHT, 32)
    # the cache stores uint8: values are the uncached ones rounded to 1/255
    Image.fromarray(arr, mode="L").save(tmp_path / "n.png")
    plain = LineDataset(records, height=HEIGHT, cache=False)[0]["input"]
    assert torch.equal(first, torch.round(plain * 255) / 255)
    # callers may modify the returned tensor without corrupting the cache
    first.fill_(0.5)
    assert torch.equal(cached[0]["input"], second)


# --------------------------------------------------------------------------- errors


def test_missing_image_file(tmp_path):
    write_png(tmp_path / "a.png", 10, 16)
    manifest = tmp_path / "m.tsv"
    manifest.write_text("a.png\tok\nmissing.png\tgone\n", encoding="utf-8")
    ds = LineDataset(read_records(manifest), height=HEIGHT)  # an audit violation, found per sample
    message = (
        f"image {tmp_path / 'missing.png'} (sample missing.png) does not exist: fix the path in the manifest "
        "(relative paths are relative to it) or remove the line"
    )
    with pytest.raises(DataError, match=re.escape(message)) as e:
        _ = ds.widths
    assert e.value.reason == "missing_file"
    assert ds.header_widths[1] == 0 and list(ds.unreadable) == [1]  # the audit drops or names it


def test_corrupt_image(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"this is not a png at all")
    (tmp_path / "bad.gt.txt").write_text("x", encoding="utf-8")
    ds = LineDataset(read_records(tmp_path), height=HEIGHT)
    path = re.escape(str(tmp_path / "bad.png"))
    with pytest.raises(DataError, match=f"cannot read image {path}"):
        ds[0]
    with pytest.raises(DataError, match=rf"{path} \(sample bad\)"):
        _ = ds.widths


def test_truncated_png(tmp_path):
    write_png(tmp_path / "t.png", 64, 16, box=(3, 3, 30, 12))
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "t.gt.txt").write_text("x", encoding="utf-8")
    ds = LineDataset(read_records(tmp_path), height=HEIGHT)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "t.png"))):
        ds.load(0)


def test_nan_pixels_in_float_tiff(tmp_path):
    write_float_tiff(tmp_path / "nan.tif", [[0.5, np.nan], [0.1, 0.2]])
    (tmp_path / "nan.gt.txt").write_text("x", encoding="utf-8")
    ds = LineDataset(read_records(tmp_path), height=HEIGHT)
    pattern = f"{re.escape(str(tmp_path / 'nan.tif'))} \\(sample nan\\) has 1 non-finite"
    with pytest.raises(DataError, match=pattern):
        ds[0]


def test_inf_pixels_in_npy(tmp_path):
    arr = np.full((4, 6), 0.5)
    arr[1, 2] = np.inf
    arr[3, 0] = np.nan
    np.save(tmp_path / "inf.npy", arr)
    (tmp_path / "inf.gt.txt").write_text("x", encoding="utf-8")
    ds = LineDataset(read_records(tmp_path), height=HEIGHT, cache=True)
    with pytest.raises(DataError, match=f"{re.escape(str(tmp_path / 'inf.npy'))}.*2 non-finite"):
        ds.load(0)


def test_float_values_out_of_range(tmp_path):
    write_float_tiff(tmp_path / "hi.tif", [[0.5, 2.0]])
    (tmp_path / "hi.gt.txt").write_text("x", encoding="utf-8")
    ds = LineDataset(read_records(tmp_path), height=HEIGHT)
    with pytest.raises(DataError, match=r"hi\.tif.*\[0\.5, 2\]"):
        ds.load(0)


def test_npy_not_two_dimensional(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 4)))
    (tmp_path / "c.gt.txt").write_text("x", encoding="utf-8")
    ds = LineDataset(read_records(tmp_path), height=HEIGHT)
    with pytest.raises(DataError, match=r"c\.npy.*not 2-D"):
        ds.load(0)
    with pytest.raises(DataError, match=r"c\.npy.*shape \(2, 3, 4\)"):
        _ = ds.widths


def test_empty_npy_widths_is_data_error(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 5), dtype=np.float32))
    (tmp_path / "e.gt.txt").write_text("x", encoding="utf-8")
    ds = LineDataset(read_records(tmp_path), height=HEIGHT)
    with pytest.raises(DataError, match=r"e\.npy"):
        ds.load(0)  # load already reports it
    with pytest.raises(DataError, match=r"e\.npy"):
        _ = ds.widths


def test_tsv_wrong_field_count(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("image\ttext\na.png\tok\nb.png\ttoo\tmany\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{manifest}:3: expected 2") + ".*got 3"):
        read_records(manifest)
    manifest.write_text("a.png\tok\n\nonly-one-field\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{manifest}:3:") + ".*got 1"):
        read_records(manifest)


def test_jsonl_missing_text(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png", "text": "x"}\n{"image": "b.png"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{manifest}:2:") + ".*'text'"):
        read_records(manifest)


def test_jsonl_invalid_json(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png", "text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{manifest}:1:")):
        read_records(manifest)


def test_duplicate_ids(tmp_path):
    manifest = tmp_path / "m.tsv"
    manifest.write_text("a.png\tone\nb.png\ttwo\na.png\tthree\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape("sample id 'a.png' appears twice")):
        read_records(manifest)
    jsonl = tmp_path / "m.jsonl"
    rows = [{"id": "dup", "image": "a.png", "text": "1"}, {"id": "dup", "image": "b.png", "text": "2"}]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{jsonl}: sample id 'dup' appears twice")):
        read_records(jsonl)


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"manifest {tmp_path / 'nope.tsv'} does not exist")):
        read_records(tmp_path / "nope.tsv")


def test_unsupported_and_empty_manifests(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("a.png,x\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape("unsupported manifest type '.csv'")):
        read_records(csv)
    empty = tmp_path / "m.tsv"
    empty.write_text("image\ttext\n", encoding="utf-8")
    with pytest.raises(DataError, match="lists no samples"):
        read_records(empty)


def test_kraken_transcript_without_image(tmp_path):
    (tmp_path / "orphan.gt.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "orphan.gt.txt")) + " has no image"):
        read_records(tmp_path)


def test_kraken_folder_without_transcripts(tmp_path):
    write_png(tmp_path / "a.png", 10, 16)
    with pytest.raises(DataError, match=re.escape("no NAME.gt.txt")):
        read_records(tmp_path)


# --------------------------------------------------------------------------- batching


def sample(id_, width, text, height=4, fill=None):
    x = torch.arange(1, height * width + 1, dtype=torch.float32).reshape(1, height, width)
    return {"id": id_, "input": x if fill is None else torch.full_like(x, fill), "text": text}


def test_collate_pads_inputs_and_targets():
    alphabet = Alphabet.from_texts(["abc "])  # ' '→1, a→2, b→3, c→4
    samples = [sample("s1", 3, "ab"), sample("s2", 5, "c a c"), sample("s3", 2, "")]
    batch = Collate(alphabet)(samples)
    assert isinstance(batch, Batch)
    assert len(batch) == 3
    assert batch.inputs.shape == (3, 1, 4, 5)
    assert batch.inputs.dtype == torch.float32
    assert batch.input_lengths.tolist() == [3, 5, 2]
    assert batch.input_lengths.dtype == torch.int64
    for i, s in enumerate(samples):
        w = s["input"].shape[-1]
        assert torch.equal(batch.inputs[i, ..., :w], s["input"])
        assert torch.all(batch.inputs[i, ..., w:] == 0)
    assert batch.targets.dtype == torch.int64
    assert batch.targets.tolist() == [[2, 3, 0, 0, 0], [4, 1, 2, 1, 4], [0, 0, 0, 0, 0]]
    assert batch.target_lengths.tolist() == [2, 5, 0]
    assert batch.ids == ["s1", "s2", "s3"]
    assert batch.texts == ["ab", "c a c", ""]


def test_collate_all_empty_texts_keeps_one_column():
    batch = Collate(Alphabet(["a"]))([sample("x", 2, ""), sample("y", 3, "")])
    assert batch.targets.shape == (2, 1)
    assert batch.targets.tolist() == [[0], [0]]
    assert batch.target_lengths.tolist() == [0, 0]


def test_collate_unknown_policy():
    alphabet = Alphabet(["a", "<unk>"])
    with pytest.raises(UnknownSymbolError):
        Collate(alphabet)([sample("x", 2, "az")])
    batch = Collate(alphabet, unknown="unk")([sample("x", 2, "az")])
    assert batch.targets.tolist() == [[1, 2]]


def test_batch_to_keeps_fields():
    batch = Collate(Alphabet(["a"]))([sample("x", 2, "a"), sample("y", 3, "aa")])
    moved = batch.to("cpu")
    assert torch.equal(moved.inputs, batch.inputs)
    assert torch.equal(moved.targets, batch.targets)
    assert moved.ids == batch.ids and moved.texts == batch.texts


INDICES = [0, 2, 3, 5, 7, 8, 9, 11, 12, 13]  # as left by an audit that dropped some samples


def test_sampler_without_shuffle_keeps_order():
    s = EpochBatchSampler(INDICES, batch_size=3, shuffle=False)
    assert list(s) == [[0, 2, 3], [5, 7, 8], [9, 11, 12], [13]]
    assert len(s) == 4
    s = EpochBatchSampler(INDICES, batch_size=3, shuffle=False, drop_last=True)
    assert list(s) == [[0, 2, 3], [5, 7, 8], [9, 11, 12]]
    assert len(s) == 3


def test_sampler_is_deterministic_per_seed_and_epoch():
    a = EpochBatchSampler(INDICES, batch_size=3, shuffle=True, seed=7)
    b = EpochBatchSampler(INDICES, batch_size=3, shuffle=True, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    batches = list(a)
    assert batches == list(b)
    assert batches == list(a)  # iterating again gives the same epoch
    assert sorted(i for batch in batches for i in batch) == INDICES
    assert [len(batch) for batch in batches] == [3, 3, 3, 1]
    assert len(a) == len(batches)

    a.set_epoch(3)
    assert list(a) != batches
    c = EpochBatchSampler(INDICES, batch_size=3, shuffle=True, seed=8)
    c.set_epoch(2)
    assert list(c) != batches


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_resume_yields_tail_of_epoch(drop_last):
    full = EpochBatchSampler(range(23), batch_size=4, shuffle=True, seed=1, drop_last=drop_last)
    full.set_epoch(5)
    batches = list(full)
    assert len(full) == len(batches) == (5 if drop_last else 6)
    for k in range(len(batches) + 2):
        resumed = EpochBatchSampler(range(23), batch_size=4, shuffle=True, seed=1, drop_last=drop_last)
        resumed.set_epoch(5, start_batch=k)
        tail = list(resumed)
        assert tail == batches[k:]
        assert len(resumed) == len(tail)
    # a new epoch starts from its first batch again
    full.set_epoch(5, start_batch=2)
    full.set_epoch(6)
    assert len(list(full)) == len(full) == len(batches)


def test_sampler_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        EpochBatchSampler([0, 1], batch_size=0, shuffle=False)


def test_manifest_with_byte_order_mark(tmp_path):
    Image.fromarray(np.full((HEIGHT, 8), 255, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "m.tsv").write_text("\ufeffimage\ttext\na.png\tab\n", encoding="utf-8")
    (tmp_path / "m.jsonl").write_text('\ufeff{"image": "a.png", "text": "ab"}\n', encoding="utf-8")
    for name in ("m.tsv", "m.jsonl"):
        records = read_records(tmp_path / name)
        assert [(r.id, r.text) for r in records] == [("a.png", "ab")]


def test_parallel_jobs_generate_the_embedded_lines_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sweep jobs (threads here; flock works the same across processes) start on an empty cache."""
    import threading
    import time

    from recognizer.data.images import digit_lines

    calls: list[str] = []
    real = digit_lines.generate_split

    def slow_generate(*args, **kwargs):  # widen the race window
        calls.append(args[1])
        time.sleep(0.2)
        return real(*args, **kwargs)

    monkeypatch.setattr(digit_lines, "generate_split", slow_generate)
    sizes = {"train": 8, "val": 4, "test": 4}
    results: list[dict] = []
    jobs = [
        threading.Thread(target=lambda: results.append(digit_lines.ensure_digit_lines(tmp_path, sizes)))
        for _ in range(2)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert sorted(calls) == ["test", "train", "val"]  # each split generated once
    assert results[0] == results[1] and all(m.is_file() for m in results[0].values())


@pytest.mark.parametrize("line", ['{"image": "a.png"}', "[1, 2]", "not json", '"text"'])
def test_bad_jsonl_line_is_named_with_its_number(tmp_path: Path, line: str) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png", "text": "1"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"m\.jsonl:3: expected a JSON object with 'image' and 'text' \("):
        read_records(manifest)


def test_a_transparent_background_reads_as_paper_not_as_the_black_under_it(tmp_path):
    """A cut-out line exported as RGBA: ink opaque black, the rest transparent (and black beneath)."""
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[:, 1, 3] = 255  # the middle column is opaque ink
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    (tmp_path / "t.gt.txt").write_text("t", encoding="utf-8")
    x = LineDataset(read_records(tmp_path), height=2, invert=False).load(0)
    assert torch.equal(x[0, 0], torch.tensor([1.0, 0.0, 1.0]))
