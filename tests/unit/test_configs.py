"""Every config composes and instantiates; typos fail loudly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate

from recognizer import CONFIG_DIR
from recognizer.engine.loop import TrainerOptions
from tests.conftest import compose_config

GROUPS = ["model", "data", "optimizer", "scheduler", "stability", "trainer", "logger"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in [*GROUPS, "experiment"] for o in options(g)],
)
def test_every_group_option_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"{group}={option}", f"paths.output_dir={tmp_path}"])
    assert cfg[group if group != "experiment" else "model"] is not None


@pytest.mark.parametrize("option", options("model"))
def test_models_instantiate_with_derived_classes(option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"model={option}", f"paths.output_dir={tmp_path}"])
    model = instantiate(cfg.model, num_classes=11)
    assert model.num_classes == 11
    assert "num_classes" not in cfg.model  # derived at instantiation, never written back


@pytest.mark.parametrize("option", options("data"))
def test_data_instantiates_without_generating(option: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"data={option}", f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path}"])
    data = instantiate(cfg.data)
    assert data.batch_size >= 1
    assert list(tmp_path.iterdir()) == []  # generation is lazy
    assert set(data.loader_options()) == {"num_workers", "pin_memory", "persistent_workers"}


def test_loader_settings_reach_the_data_loader(tmp_path: Path) -> None:
    from recognizer.alphabet import Alphabet
    from recognizer.data.images.lines import LineDataset
    from recognizer.data.loaders import make_loader

    overrides = ["data.num_workers=2", "data.pin_memory=true", "data.persistent_workers=false"]
    cfg = compose_config("train", [*overrides, f"paths.output_dir={tmp_path}", f"paths.data_dir={tmp_path}"])
    data = instantiate(cfg.data)
    loader, _ = make_loader(LineDataset([], 16), [], Alphabet("01"), 4, False, 0, "error", **data.loader_options())
    assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (2, True, False)
    loader, _ = make_loader(LineDataset([], 16), [], Alphabet("01"), 4, False, 0, "error", num_workers=2)
    assert loader.persistent_workers  # the default: workers live across epochs
    with pytest.raises(
        InstantiationException, match=r"need data.batch_size >= 1 and data.num_workers >= 0, got 32, -1"
    ):
        instantiate(compose_config("train", ["data.num_workers=-1", f"paths.output_dir={tmp_path}"]).data)


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizer_and_schedulers_instantiate(option: str, tmp_path: Path) -> None:
    for sched in options("scheduler"):
        cfg = compose_config("train", [f"optimizer={option}", f"scheduler={sched}", f"paths.output_dir={tmp_path}"])
        params = [torch.nn.Parameter(torch.zeros(2))]
        opt = instantiate(cfg.optimizer)(params=params)
        scheduler = instantiate(cfg.scheduler)(optimizer=opt, total_steps=100)
        assert opt.param_groups[0]["lr"] <= cfg.optimizer.lr
        opt.step()  # the order the loop uses (the other one warns and skips the schedule's first value)
        scheduler.step()


def test_trainer_instantiates_to_options(tmp_path: Path) -> None:
    cfg = compose_config("train", [f"paths.output_dir={tmp_path}"])
    assert isinstance(instantiate(cfg.trainer), TrainerOptions)


def test_eval_config_composes(tmp_path: Path) -> None:
    cfg = compose_config("eval", ["checkpoint=x.ckpt", f"paths.output_dir={tmp_path}"])
    assert cfg.split == "test"


def test_generic_defaults(tmp_path: Path) -> None:
    cfg = compose_config("train", ["data=lines", f"paths.output_dir={tmp_path}"])
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.weight_decay == 0.01
    assert cfg.scheduler.warmup_steps is None and cfg.trainer.max_epochs == 30  # warmup fits the run:
    assert (cfg.scheduler.warmup_fraction, cfg.scheduler.max_warmup_steps) == (0.03, 1000)  # 3%, at most 1000
    assert cfg.stability.min_frames_per_label == 2.0
    assert cfg.stability.zero_infinity is True
    assert cfg.trainer.grad_clip == 1.0


@pytest.mark.parametrize("override", ["optimizer.lrr=1", "trainer.max_epoch=3", "model=crnnn"])
def test_misspelt_override_fails(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose_config("train", [override])


def test_embedded_data_gets_its_small_data_tuning(tmp_path: Path) -> None:
    cfg = compose_config("train", [f"paths.output_dir={tmp_path}"])
    assert cfg.trainer.max_epochs == 15  # the only specialisation left: a shorter run
    assert (cfg.optimizer.lr, cfg.scheduler.warmup_steps, cfg.optimizer.weight_decay) == (1e-3, None, 0.01)
    override = compose_config("train", ["optimizer.lr=5e-4", f"paths.output_dir={tmp_path}"])
    assert override.optimizer.lr == 5e-4  # the command line still wins


def defaults_comments(config: str) -> dict[str, str]:
    """``group → comment`` of each entry of a primary config's defaults list (continuation lines joined)."""
    comments: dict[str, str] = {}
    group = None
    for line in (Path(CONFIG_DIR) / f"{config}.yaml").read_text().splitlines():
        entry = re.match(r"^  - (?:optional )?(\w+): \S+\s*(?:# (.*))?$", line)
        if entry:
            group = entry[1]
            comments[group] = entry[2] or ""
        elif group and re.match(r"^\s+#   ", line):
            comments[group] += " " + line.strip("# ")
        else:
            group = None
    return comments


@pytest.mark.parametrize("config", ["train", "eval", "doctor", "lr_find"])
def test_defaults_comments_list_every_option_of_their_group(config: str) -> None:
    comments = defaults_comments(config)
    assert {"data", "hydra", "paths"} <= set(comments)
    for group, comment in comments.items():
        named = {part.split()[0].rstrip(":") for part in comment.split("|") if part.strip()}
        assert named - {"null"} == set(options(group)), f"recognizer/conf/{config}.yaml, {group}: {comment!r}"


#: ``key: value`` (a value, not a section header) at any indentation; list items and comment lines are not keys
KEY_WITH_VALUE = re.compile(r"^\s*[\w@/.]+\s*:\s*(?P<rest>[^#\s].*)$")


def test_every_yaml_key_has_a_comment() -> None:
    """README: "Each YAML key has a comment with its valid values": every key that sets a value says on its line
    what it is (Hydra's ``_target_``/``_partial_`` name code, and ``override`` lines name options: not keys)."""
    bare = []
    for path in sorted(Path(CONFIG_DIR).rglob("*.yaml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            m = KEY_WITH_VALUE.match(line)
            commented = re.search(r"\s#", m["rest"]) if m else None  # YAML: a comment needs a space before '#'
            if m and not commented and not line.lstrip().startswith(("_target_", "_partial_")):
                bare.append(f"{path.relative_to(CONFIG_DIR)}:{number}: {line.strip()}")
    assert not bare, "keys without a comment:\n" + "\n".join(bare)


@pytest.mark.parametrize("data", ["lines", "pages", "copiste", "cremma_mss18", "hooker"])
def test_line_and_page_data_start_from_a_model_sized_for_real_lines(data: str, tmp_path: Path) -> None:
    lines_model = compose_config("train", [f"data={data}", "model=crnn_lines", f"paths.output_dir={tmp_path}"]).model
    for config in ("train", "doctor", "lr_find"):
        assert compose_config(config, [f"data={data}", f"paths.output_dir={tmp_path}"]).model == lines_model, config
    chosen = compose_config("train", [f"data={data}", "model=crnn", f"paths.output_dir={tmp_path}"]).model
    assert list(chosen.channels) == [16, 32, 64]  # the command line still picks another
    embedded = compose_config("train", [f"paths.output_dir={tmp_path}"]).model
    assert list(embedded.channels) == [16, 32, 64]  # the embedded digits keep the small default


#: The real-page recipes built on experiment/common/htr_pages.yaml.
PAGE_RECIPES = ["htr_copiste_crnn", "htr_cremma_mss18_crnn", "htr_french_base_crnn", "htr_hooker_crnn"]


@pytest.mark.parametrize("recipe", PAGE_RECIPES)
def test_the_french_base_model_loads_into_every_page_recipe(recipe: str, tmp_path: Path) -> None:
    """trainer.init_from needs the same model config and height: the shared settings keep them equal."""
    base = compose_config("train", ["experiment=htr_french_base_crnn", f"paths.output_dir={tmp_path}"])
    cfg = compose_config("train", [f"experiment={recipe}", f"paths.output_dir={tmp_path}"])
    assert cfg.model == base.model
    assert cfg.data.height == base.data.height == 48
    assert cfg.data.augment.enabled and cfg.trainer.bucketing and cfg.trainer.checkpoint_every_n_steps == 100
    assert cfg.task_name == recipe


def test_french_base_keeps_the_splits_of_its_corpora(tmp_path: Path) -> None:
    """data=french_base repeats CREMMA's folder names (a config cannot read another option's list): they must stay
    data=cremma_mss18's split, and Copiste's are the list files of scripts/page_split_lists.py, so no val or test
    page of either corpus is trained on."""
    out = f"paths.output_dir={tmp_path}"
    base = compose_config("train", ["data=french_base", out]).data
    cremma = compose_config("train", ["data=cremma_mss18", out]).data
    data_dir = compose_config("train", [out]).paths.data_dir
    assert list(base.train) == [f"{data_dir}/splits/copiste/train.txt", *cremma.train]
    assert list(base.val) == [f"{data_dir}/splits/copiste/val.txt", cremma.val]
    assert list(base.test) == [f"{data_dir}/splits/copiste/test.txt", cremma.test]


def test_the_config_tree_ships_in_the_package_and_every_file_is_package_data() -> None:
    """A wheel holds what pyproject's package-data names: every file of the config tree and of the shipped
    resources (lexicons) must match it."""
    import glob

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package = Path(CONFIG_DIR).parent
    assert package == Path(__file__).resolve().parents[2] / "recognizer"
    pyproject = tomllib.loads((package.parent / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["recognizer"]
    shipped = {p for pattern in patterns for p in glob.glob(pattern, root_dir=package, recursive=True)}
    data = [p for folder in (Path(CONFIG_DIR), package / "resources") for p in folder.rglob("*") if p.is_file()]
    files = {str(p.relative_to(package)) for p in data if p.suffix != ".py" and "__pycache__" not in p.parts}
    assert files - shipped == set(), "add their suffix to [tool.setuptools.package-data] in pyproject.toml"
    assert {"conf/train.yaml", "resources/digit_words.lexicon", "conf/hydra/launcher/slurm.yaml"} <= shipped
