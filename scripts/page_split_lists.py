"""Write the page split of a pages data config as XML list files, for a peer tool on the same split.

``ketos train -f xml -t train.txt -e val.txt`` (kraken) reads one XML path per line; this writes
exactly the files recognizer trains and validates on (the same document split, seed and pattern):

    python scripts/page_split_lists.py --out runs/copiste_split data=copiste data.root=/path/to/data

writes ``train.txt``, ``val.txt`` and ``test.txt`` (absolute paths, links not followed) and prints the page counts.
kraken looks for a page's image beside its XML; where a corpus keeps them apart (Copiste: ``alto/``
and ``jpg/``), link both into one folder and list the XML there with ``--xml-dir``:

    mkdir flat && ln -s $PWD/data/copiste/alto/*.xml $PWD/data/copiste/jpg/*.jpg flat/
    python scripts/page_split_lists.py --out runs/copiste_split --xml-dir flat data=copiste
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recognizer import CONFIG_DIR
from recognizer.data.base import DataError


def write_lists(data: object, out: Path, xml_dir: Path | None = None) -> dict[str, int]:
    """Write ``out/{split}.txt`` for every split the data config has (each XML as ``xml_dir/NAME`` when
    given); return the page counts."""
    if getattr(data, "split_unit", "document") == "line":
        raise DataError(
            "data.split_unit=line splits lines, not pages: no page list holds it. kraken draws such a split "
            "itself (ketos train -p 0.9 on all the pages); or split by document to give both tools the same pages"
        )
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "val", "test"):
        try:
            files = data.files(split)  # type: ignore[attr-defined]
        except DataError:  # a split the config does not have (no test pages)
            continue
        paths = [(xml_dir / Path(f).name if xml_dir else Path(f)).absolute() for f in files]  # links kept
        (out / f"{split}.txt").write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
        counts[split] = len(files)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for train.txt, val.txt, test.txt")
    parser.add_argument("--xml-dir", help="list each XML as XML_DIR/NAME (a folder with the XML beside its image)")
    parser.add_argument("overrides", nargs="*", help="training config overrides, e.g. data=copiste data.root=DIR")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", [*args.overrides, "paths.output_dir=."])
    counts = write_lists(instantiate(cfg.data), Path(args.out), Path(args.xml_dir) if args.xml_dir else None)
    print(", ".join(f"{split}: {n} pages → {Path(args.out) / f'{split}.txt'}" for split, n in counts.items()))


if __name__ == "__main__":
    main()
