"""What an ALTO/PAGE file from a stranger can make recognizer do (issue 21, items 4 and 5): image paths stay
inside the allowed folders, entities are refused, nothing is overwritten or half-written, odd prefixes and
malformed numbers are handled with a message naming the file."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import recognizer.data.pages.safety as safety
import recognizer.files as files
from recognizer.cli.transcribe import main
from recognizer.data.base import DataError
from recognizer.data.pages import PagesData, parse_page
from recognizer.data.pages.write import LineText, write_page
from tests.helpers.page_fixtures import PAGE_NS, alto_line, alto_xml, page_line, page_xml, write, write_page_image
from tests.helpers.tiny_checkpoint import tiny_checkpoint

LINE = page_line("l1", "secret text", coords="1,1 30,1 30,10 1,10")


def pages_data(tmp_path: Path, **kwargs) -> PagesData:
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    return PagesData(**kwargs)


@pytest.fixture(scope="module")
def ckpt(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory, data_root)


# --------------------------------------------------------------------------- 4. image paths


@pytest.mark.parametrize("kind", ["traversal", "absolute"])
def test_image_path_outside_the_folders_is_not_read(tmp_path: Path, kind: str) -> None:
    secret = tmp_path / "elsewhere" / "scan.png"
    write_page_image(secret)
    name = "../../elsewhere/scan.png" if kind == "traversal" else str(secret)
    xml = write(tmp_path / "corpus" / "deep" / "p.xml", page_xml(LINE, image=name))
    page = parse_page(xml)
    assert page.image is None and secret not in [p.resolve() for p in page.images]
    named = xml.parent / name if kind == "traversal" else secret
    assert page.refused == named
    with pytest.raises(DataError) as info:
        pages_data(tmp_path, train=str(xml)).records("train")
    message = str(info.value)
    assert message.startswith(f"{xml}: line l1: image outside the allowed folders (no image found (tried ")
    assert f"; not read: {named} (the XML names {name!r}), whose real path {secret} lies outside the XML's folder " in (
        message
    )
    assert "add its folder to data.image_dirs, or set data.allow_outside_images=true if you trust this file" in message


def test_etc_passwd_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xml = write(tmp_path / "p.xml", page_xml(LINE, image="../../../../../../../../etc/passwd"))
    import recognizer.data.pages.cache as cache

    opened: list[Path] = []
    monkeypatch.setattr(cache, "load_page_image", lambda path: opened.append(path))
    data = pages_data(tmp_path, train=str(xml), audit_policy="drop")
    with pytest.raises(DataError, match=re.escape("the train pages (1 XML files) hold no usable line")):
        data.records("train")
    assert opened == [] and data.drops["train"] == {"image outside the allowed folders": 1}
    assert parse_page(xml).refused.resolve() == Path("/etc/passwd")


def test_allow_outside_images_lets_the_path_through(tmp_path: Path) -> None:
    write_page_image(tmp_path / "elsewhere" / "scan.png")
    xml = write(tmp_path / "corpus" / "p.xml", page_xml(LINE, image="../elsewhere/scan.png"))
    [record] = pages_data(tmp_path, train=str(xml), allow_outside_images=True).records("train")
    assert record.text == "secret text"
    assert parse_page(xml, allow_outside_images=True).image == tmp_path / "corpus" / "../elsewhere/scan.png"
    # naming the folder in image_dirs is the other way: the same path is then inside
    assert parse_page(xml, image_dirs=["../elsewhere"]).image == tmp_path / "corpus" / "../elsewhere/scan.png"


def test_allow_outside_images_is_a_config_key_off_by_default() -> None:
    from omegaconf import OmegaConf

    from recognizer import CONFIG_DIR

    pages = OmegaConf.load(Path(CONFIG_DIR) / "data" / "pages.yaml")
    assert pages.allow_outside_images is False and pages._target_ == "recognizer.data.PagesData"
    text = (Path(CONFIG_DIR) / "data" / "pages.yaml").read_text(encoding="utf-8")
    assert "allow_outside_images: false    # true: follow an image path the XML names" in text
    assert PagesData(train="x").allow_outside_images is False  # the constructor's default agrees


def test_symlink_inside_the_folder_pointing_elsewhere_is_outside(tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere" / "scan.png"
    write_page_image(secret)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "page.png").symlink_to(secret)
    xml = write(tmp_path / "corpus" / "p.xml", page_xml(LINE, image="page.png"))
    page = parse_page(xml)
    assert page.image is None and page.refused == tmp_path / "corpus" / "page.png"
    with pytest.raises(DataError, match=re.escape(f"whose real path {secret} lies outside the XML's folder")):
        pages_data(tmp_path, train=str(xml)).records("train")
    assert parse_page(xml, image_dirs=[str(tmp_path / "elsewhere")]).image == tmp_path / "corpus" / "page.png"
    # a link that stays inside the folder is fine
    (tmp_path / "corpus" / "page.png").unlink()
    write_page_image(tmp_path / "corpus" / "scans" / "real.png")
    (tmp_path / "corpus" / "page.png").symlink_to(tmp_path / "corpus" / "scans" / "real.png")
    assert parse_page(xml).image == tmp_path / "corpus" / "page.png"


def test_the_base_name_of_a_refused_path_is_still_found_inside(tmp_path: Path) -> None:
    """Exports often keep the exporting machine's path: its base name beside the XML is used."""
    write_page_image(tmp_path / "corpus" / "scan.png")
    xml = write(tmp_path / "corpus" / "p.xml", page_xml(LINE, image="C:\\Users\\someone\\scans\\scan.png"))
    assert parse_page(xml).image == tmp_path / "corpus" / "scan.png"
    xml = write(tmp_path / "corpus" / "q.xml", page_xml(LINE, image="/home/someone/scans/scan.png"))
    assert parse_page(xml).image == tmp_path / "corpus" / "scan.png"


def test_transcribe_refuses_a_traversal_and_allows_it_with_the_flag(ckpt: Path, tmp_path: Path, capsys) -> None:
    write_page_image(tmp_path / "elsewhere" / "page.png", boxes=[(5, 5, 25, 10)])
    xml = write(tmp_path / "in" / "p.xml", page_xml(LINE, image="../elsewhere/page.png"))
    args = [str(ckpt), str(xml), "--out-dir", str(tmp_path / "out"), "--device", "cpu"]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert f"{xml}: page image not found (tried " in err
    assert "lies outside the XML's folder and --image-dir: put the image beside the XML" in err
    assert "or set --allow-outside-images if you trust this file" in err
    assert not (tmp_path / "out" / "p.xml").exists()
    main([*args, "--allow-outside-images"])
    assert capsys.readouterr().out == f"{tmp_path / 'out' / 'p.xml'}\n"


# --------------------------------------------------------------------------- 4. transcribe's outputs


def test_transcribe_never_overwrites_an_input_through_a_link(ckpt: Path, tmp_path: Path) -> None:
    write_page_image(tmp_path / "out" / "page.png")
    real = write(tmp_path / "out" / "p.xml", page_xml(LINE))
    before = real.read_bytes()
    write_page_image(tmp_path / "links" / "page.png")
    (tmp_path / "links" / "p.xml").symlink_to(real)  # the input is a link into the out-dir
    args = ["--out-dir", str(tmp_path / "out"), "--device", "cpu"]
    with pytest.raises(SystemExit, match=re.escape(f"output {tmp_path / 'out' / 'p.xml'} would overwrite the input")):
        main([str(ckpt), str(tmp_path / "links" / "p.xml"), *args])
    assert real.read_bytes() == before
    # the other way round: a link in the out-dir to the input
    write_page_image(tmp_path / "in" / "page.png")
    source = write(tmp_path / "in" / "p.xml", page_xml(LINE))
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "p.xml").symlink_to(source)
    with pytest.raises(SystemExit, match=r"would overwrite the input .*in/p\.xml \(one is a link to the other\)"):
        main([str(ckpt), str(source), "--out-dir", str(tmp_path / "out2"), "--device", "cpu"])
    assert source.read_bytes() == before


def test_transcribe_knows_the_input_folder_by_a_name_paths_do_not_fold(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Pages/`` for ``pages/`` on a case-insensitive file system, or a bind mount: one folder that
    ``Path.resolve()`` sees as two (simulated: a link that resolve() does not follow)."""
    write_page_image(tmp_path / "pages" / "page.png")
    source = write(tmp_path / "pages" / "p.xml", page_xml(LINE))
    before = source.read_bytes()
    (tmp_path / "Pages").symlink_to(tmp_path / "pages")
    monkeypatch.setattr(Path, "resolve", lambda self, strict=False: self.absolute())
    args = [str(ckpt), str(source), "--out-dir", str(tmp_path / "Pages"), "--device", "cpu"]
    with pytest.raises(SystemExit, match=re.escape(f"output folder {tmp_path / 'Pages'} holds input pages")):
        main(args)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'Pages' / 'p.xml'} is the input {source}")):
        write_page(source, [None], tmp_path / "Pages" / "p.xml")
    assert source.read_bytes() == before


def test_write_page_refuses_its_own_input_and_replaces_a_link_instead_of_writing_through(tmp_path: Path) -> None:
    xml = write(tmp_path / "p.xml", page_xml(LINE))
    result = LineText("new", 0.5, (1.0, 1.0, 30.0, 10.0))
    (tmp_path / "alias.xml").symlink_to(xml)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'alias.xml'} is the input {xml} (or a link to it)")):
        write_page(xml, [result], tmp_path / "alias.xml")
    other = write(tmp_path / "other.txt", "keep me")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "p.xml").symlink_to(other)
    write_page(xml, [result], tmp_path / "o" / "p.xml")
    assert other.read_text() == "keep me"  # the link was replaced, its target untouched
    assert not (tmp_path / "o" / "p.xml").is_symlink()
    assert parse_page(tmp_path / "o" / "p.xml").lines[0].text == "new"


def test_output_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    xml = write(tmp_path / "p.xml", page_xml(LINE))
    out = write(tmp_path / "o" / "p.xml", "the previous transcription")
    result = LineText("new", 0.5, (1.0, 1.0, 30.0, 10.0))
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def failing_replace(src, dst):
        renames.append((str(src), str(dst)))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left on device"):
        write_page(xml, [result], out)
    assert out.read_text() == "the previous transcription"  # the old file, not half a new one
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.xml"]  # no temporary file left behind
    [(src, dst)] = renames
    assert Path(src).parent == out.parent and Path(src).name.startswith(".p.xml.") and dst == str(out)
    monkeypatch.setattr(files.os, "replace", real_replace)
    write_page(xml, [result], out)
    assert parse_page(out).lines[0].text == "new"
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.xml"]


# --------------------------------------------------------------------------- 5. XML


ENTITY_DOCS = {
    "internal": '<!DOCTYPE PcGts [<!ENTITY who "an entity">]>',
    "external": '<!DOCTYPE PcGts [<!ENTITY who SYSTEM "file:///etc/passwd">]>',
    "parameter": '<!DOCTYPE PcGts [<!ENTITY % p "x">]>',
    "laughs": '<!DOCTYPE PcGts [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>',
}


@pytest.mark.parametrize("kind", sorted(ENTITY_DOCS))
def test_entity_declarations_are_refused(tmp_path: Path, kind: str) -> None:
    write_page_image(tmp_path / "page.png")
    text = page_xml(page_line("l1", {"parameter": "x", "laughs": "&lol2;"}.get(kind, "&who;"), "1,1 30,1 30,10"))
    text = text.replace("<!-- exported by a test -->", ENTITY_DOCS[kind])
    xml = write(tmp_path / "p.xml", text)
    name = {"internal": "who", "external": "who", "parameter": "p", "laughs": "lol"}[kind]
    expected = re.escape(f"{xml}: its DOCTYPE declares the entity {name!r}; entities are refused")
    with pytest.raises(DataError, match=expected + r".*delete the <!DOCTYPE \.\.\.> block"):
        parse_page(xml)
    with pytest.raises(DataError, match=expected):
        pages_data(tmp_path, train=str(xml), audit_policy="drop").records("train")
    with pytest.raises(DataError, match=expected):
        write_page(xml, [None], tmp_path / "o" / "p.xml")
    assert not (tmp_path / "o" / "p.xml").exists()


def test_doctype_is_not_copied_into_the_written_xml(tmp_path: Path) -> None:
    text = page_xml(LINE).replace(
        "<!-- exported by a test -->",
        '<!-- exported by a test -->\n<!DOCTYPE PcGts SYSTEM "file:///etc/passwd">\n<?page-tool v1?>',
    )
    xml = write(tmp_path / "p.xml", text)
    assert parse_page(xml).lines[0].text == "secret text"  # a DOCTYPE without entities is read (never loaded)
    out = write_page(xml, [LineText("ours", 0.5, (1.0, 1.0, 30.0, 10.0))], tmp_path / "o" / "p.xml")
    written = out.read_text(encoding="utf-8")
    assert "DOCTYPE" not in written and "file:///etc/passwd" not in written
    assert written.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<!-- exported by a test -->\n<?page-tool v1?>\n')
    assert parse_page(out).lines[0].text == "ours"


def test_oversize_xml_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert safety.MAX_XML_BYTES == 50_000_000  # the default: 50 MB
    monkeypatch.setattr(safety, "MAX_XML_BYTES", 2000)
    xml = write(tmp_path / "big.xml", page_xml(LINE + "\n" + "<!--" + "x" * 3000 + "-->"))
    message = f"{xml}: 0.0 MB is over the 0.002 MB limit for one XML page (recognizer.data.pages.safety.MAX_XML_BYTES)"
    with pytest.raises(DataError, match=re.escape(message) + ".*check that this file is one page's XML"):
        parse_page(xml)
    with pytest.raises(DataError, match=re.escape(message)):
        write_page(xml, [None], tmp_path / "o" / "big.xml")
    small = write(tmp_path / "small.xml", page_xml(""))
    assert parse_page(small).lines == []


NS0_PAGE = f"""<?xml version="1.0" encoding="UTF-8"?>
<ns0:PcGts xmlns:ns0="{PAGE_NS}" xmlns:ns1="http://www.w3.org/2001/XMLSchema-instance"
    ns1:schemaLocation="{PAGE_NS} {PAGE_NS}/pagecontent.xsd">
  <ns0:Metadata><ns0:Creator>ElementTree</ns0:Creator></ns0:Metadata>
  <ns0:Page imageFilename="page.png" imageWidth="120" imageHeight="60">
    <ns0:TextRegion id="r1">
      <ns0:TextLine id="l1"><ns0:Coords points="1,1 30,1 30,10 1,10"/>
        <ns0:TextEquiv><ns0:Unicode>old</ns0:Unicode></ns0:TextEquiv></ns0:TextLine>
      <ns0:TextLine id="l2"><ns0:Coords points="1,20 30,20 30,30 1,30"/></ns0:TextLine>
    </ns0:TextRegion>
  </ns0:Page>
</ns0:PcGts>
"""


def test_ns0_prefixed_page_is_written_with_its_prefixes(tmp_path: Path) -> None:
    xml = write(tmp_path / "p.xml", NS0_PAGE)
    results = [LineText("first", 0.9, (1.0, 1.0, 30.0, 10.0)), LineText("second", 0.8, (1.0, 20.0, 30.0, 30.0))]
    out = write_page(xml, results, tmp_path / "o" / "p.xml")
    assert [line.text for line in parse_page(out).lines] == ["first", "second"]
    written = out.read_text(encoding="utf-8")
    assert f'<ns0:PcGts xmlns:ns0="{PAGE_NS}" xmlns:ns1="http://www.w3.org/2001/XMLSchema-instance"' in written
    assert 'ns1:schemaLocation="' in written and '<ns0:TextEquiv conf="0.9000"><ns0:Unicode>first' in written
    root = ET.fromstring(out.read_bytes())
    assert {e.tag.split("}")[0] + "}" for e in root.iter()} == {"{" + PAGE_NS + "}"}  # every element still PAGE
    # the document's prefixes do not leak into the next file written (no global registry)
    other = write(tmp_path / "q.xml", page_xml(LINE))
    assert f'<PcGts xmlns="{PAGE_NS}"' in write_page(other, [None], tmp_path / "o" / "q.xml").read_text()


def test_ns0_prefixed_page_through_transcribe(ckpt: Path, tmp_path: Path, capsys) -> None:
    write_page_image(tmp_path / "in" / "page.png", boxes=[(5, 3, 25, 8), (5, 22, 20, 28)])
    xml = write(tmp_path / "in" / "p.xml", NS0_PAGE)
    main([str(ckpt), str(xml), "--out-dir", str(tmp_path / "out"), "--device", "cpu"])
    out = tmp_path / "out" / "p.xml"
    assert capsys.readouterr().out == f"{out}\n"
    lines = parse_page(out).lines
    assert [line.id for line in lines] == ["l1", "l2"] and all(line.text is not None for line in lines)
    assert "<ns0:PcGts " in out.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (page_xml(LINE).replace('imageWidth="120"', 'imageWidth="abc"'), "the imageWidth attribute of <Page> is 'abc'"),
        (
            page_xml(LINE).replace('imageHeight="60"', 'imageHeight="nan"'),
            "the imageHeight attribute of <Page> is 'nan'",
        ),
        (
            alto_xml(alto_line("l1", '<String CONTENT="x"/>')).replace('WIDTH="120"', 'WIDTH="12O"'),
            "the WIDTH attribute of <Page> is '12O'",
        ),
    ],
)
def test_malformed_page_size_names_file_element_and_attribute(tmp_path: Path, text: str, message: str) -> None:
    xml = write(tmp_path / "p.xml", text)
    with pytest.raises(DataError, match=re.escape(f"{xml}: {message}, not a number; correct it to the page image")):
        parse_page(xml)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (page_line("l1", "a", coords="1,1 x,2 3,3"), "the points attribute of <Coords> is not a list of numbers"),
        (page_line("l1", "a", coords="1,1 30,1 30,10", baseline="1,8 3O,8"), "the points attribute of <Baseline>"),
        (
            page_line("l1", "a", extra='<Coords><Point x="1" y="1"/><Point x="a" y="2"/></Coords>'),
            "the x attribute of <Point> is 'a', not a number",
        ),
    ],
)
def test_malformed_page_coordinates_name_file_line_element_and_attribute(
    tmp_path: Path, line: str, problem: str
) -> None:
    write_page_image(tmp_path / "page.png")
    xml = write(tmp_path / "p.xml", page_xml(line))
    with pytest.raises(DataError, match=re.escape(f"{xml}: line l1: degenerate geometry ({problem}")):
        pages_data(tmp_path, train=str(xml)).records("train")
    data = pages_data(tmp_path, train=[str(xml), str(write(tmp_path / "q.xml", page_xml(LINE)))], audit_policy="drop")
    assert [r.id for r in data.records("train")] == ["q/l1"]  # with drop: one line dropped, counted
    assert data.drops["train"] == {"degenerate geometry": 1}


def test_malformed_alto_coordinates_name_the_attribute(tmp_path: Path) -> None:
    write_page_image(tmp_path / "page.png")
    cases = {
        "HPOS": alto_line("l1", '<String CONTENT="x"/>', 'HPOS="five" VPOS="1" WIDTH="20" HEIGHT="9"'),
        "POINTS": alto_line("l1", '<String CONTENT="x"/>', polygon="1 1 9 1 nine 9"),
        "BASELINE": alto_line("l1", '<String CONTENT="x"/>', 'BASELINE="1,5 x,5"'),
    }
    for attribute, line in cases.items():
        xml = write(tmp_path / f"{attribute}.xml", alto_xml(line))
        element = "Polygon" if attribute == "POINTS" else "TextLine"
        with pytest.raises(
            DataError, match=re.escape(f"{xml}: line l1: degenerate geometry (the {attribute} attribute of <{element}>")
        ):
            pages_data(tmp_path, train=str(xml)).records("train")


def test_written_xml_keeps_character_references_and_mixed_namespaces(tmp_path: Path) -> None:
    """Nothing but the text changes: a &#13; stays a CR, an element out of any namespace stays out of it."""
    inner = (
        '<TextLine id="l1"><Coords points="1,1 30,1 30,10"/><TextEquiv><Unicode>a&#13;b</Unicode></TextEquiv>'
        '</TextLine><Tool xmlns="" version="1"/><X xmlns:p="urn:one"><p:Y/></X><Z xmlns:p="urn:two"><p:W/></Z>'
    )
    xml = write(tmp_path / "p.xml", page_xml(inner))
    out = write_page(xml, [None], tmp_path / "o" / "p.xml")

    def rows(path: Path) -> list[tuple]:
        return [(e.tag, dict(e.attrib), e.text) for e in ET.parse(path).getroot().iter()]

    assert rows(out) == rows(xml)
    assert ("Tool", {"version": "1"}, None) in rows(out) and ("{urn:two}W", {}, None) in rows(out)


def test_a_checkpoint_never_widens_where_transcribe_reads() -> None:
    from recognizer.inference import checkpoint_image_dirs

    assert checkpoint_image_dirs(["images", "scans/jpg", "../jpg", "/etc", "a/../../b"]) == ["images", "scans/jpg"]
