"""Fine-tuning across alphabets (``trainer.init_from`` + ``trainer.init_alphabet``) and a frozen backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recognizer.alphabet import Alphabet
from recognizer.checkpoint import build_model, load_checkpoint
from recognizer.engine.finetune import BackboneFreeze, init_alphabet, init_weights, train_subset
from recognizer.inference import Transcriber
from recognizer.models import CRNN
from recognizer.train import train
from tests.conftest import compose_config
from tests.helpers.runs import lines_overrides, write_lines

BASE = {"alphabet": ["a", "b", "c"]}


def test_union_keeps_the_checkpoint_ids_and_appends_the_new_symbols() -> None:
    alphabet = init_alphabet(BASE, "x.ckpt", ["ab£", "d a"], None, "union")
    assert alphabet.symbols == ["a", "b", "c", " ", "d", "£"]  # a, b, c keep ids 1, 2, 3
    assert init_alphabet(BASE, "x.ckpt", ["ab"], None, "union").symbols == ["a", "b", "c"]
    assert init_alphabet(BASE, "x.ckpt", ["ab"], None, "union", with_unk=True).symbols == ["a", "b", "c", "<unk>"]


def test_new_is_the_data_alphabet_and_strict_names_the_way_out() -> None:
    assert init_alphabet(BASE, "x.ckpt", ["db", "b£"], None, "new").symbols == ["b", "d", "£"]
    with pytest.raises(
        ValueError,
        match=r"outside its alphabet Alphabet\('abc'\): \['£'\]\. Its output layer has no "
        r"class for them: set trainer\.init_alphabet=union \(add them\) or new",
    ):
        init_alphabet(BASE, "x.ckpt", ["a£"], None, "strict")
    with pytest.raises(ValueError, match=r"trainer\.init_alphabet must be one of strict, union, new, got 'grow'"):
        init_alphabet(BASE, "x.ckpt", ["a"], None, "grow")


def test_output_rows_follow_their_symbols() -> None:
    torch.manual_seed(0)
    old = CRNN(num_classes=4, height=32)  # blank, a, b, c
    ckpt = {"alphabet": ["a", "b", "c"], "model": old.state_dict()}
    new_alphabet = Alphabet(["c", "a", "x"])  # policy new: c and a shared, b dropped, x added
    model = CRNN(num_classes=4, height=32)
    fresh_x = model.head.weight[3].clone()
    info = init_weights(model, ckpt, new_alphabet, "x.ckpt")
    w, w_old = model.head.weight, old.head.weight
    assert torch.equal(w[0], w_old[0]) and torch.equal(w[1], w_old[3]) and torch.equal(w[2], w_old[1])  # blank, c, a
    assert torch.equal(w[3], fresh_x)  # x: a fresh row
    assert torch.equal(model.head.bias[1], old.head.bias[3])
    assert torch.equal(model.rnn.fwd[0].weight_ih_l0, old.rnn.fwd[0].weight_ih_l0)  # the backbone as trained
    assert info == {"from": "x.ckpt", "kept": ["a", "c"], "added": ["x"], "dropped": ["b"]}
    with pytest.raises(ValueError, match=r"its weights do not fit this model \(.*rnn_hidden|its weights do not fit"):
        init_weights(CRNN(num_classes=4, height=32, rnn_hidden=32), ckpt, new_alphabet, "x.ckpt")
    trained_at_32 = ckpt | {"config": {"data": {"height": 32}}}  # a base of another height: the message says which
    said = r"rnn\.fwd\.0\.weight_ih_l0: .*data\.n_mels/height \(it was trained with data\.height=32\)$"
    with pytest.raises(ValueError, match=said):
        init_weights(CRNN(num_classes=4, height=48), trained_at_32, new_alphabet, "x.ckpt")


def test_freeze_trains_only_the_head_until_its_step() -> None:
    model = CRNN(num_classes=4, height=32)
    freeze = BackboneFreeze(model, steps=3)
    freeze.update(0)
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("head."))
    assert all(p.requires_grad for p in model.head.parameters())
    freeze.update(3)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_fine_tune_a_model_to_new_symbols_with_a_frozen_backbone(tmp_path: Path) -> None:
    source = tmp_path / "source"
    base = write_lines(tmp_path / "base", {f"b{i}": "ab"[i % 2] * 2 + "ba"[i % 2] for i in range(8)})
    train(compose_config("train", lines_overrides(base, source)))
    start = load_checkpoint(source / "checkpoints" / "last.ckpt")
    hand = write_lines(tmp_path / "hand", {f"h{i}": ["a£", "cab", "b£c"][i % 3] for i in range(8)})
    out = tmp_path / "fine"
    extra = [
        f"trainer.init_from={source}/checkpoints/last.ckpt",
        "trainer.init_alphabet=union",
        "trainer.freeze_backbone_steps=100",
        "trainer.ema_decay=null",
        "trainer.train_samples=4",  # 4 of the 8 lines: one batch of 4
    ]
    train(compose_config("train", lines_overrides(hand, out, *extra)))
    ckpt = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["step"] == 1
    assert ckpt["alphabet"] == ["a", "b", "c", "£"]
    assert ckpt["initialised"] == {
        "from": f"{source}/checkpoints/last.ckpt",
        "kept": ["a", "b"],
        "added": ["c", "£"],
        "dropped": [],
    }
    for name, value in start["model"].items():  # init_from starts from "model" (the average); the backbone stays
        if not name.startswith("head.") and "running" not in name and "num_batches" not in name:
            assert torch.equal(ckpt["model"][name], value), name
    assert not torch.equal(ckpt["model"]["head.weight"][:3], start["model"]["head.weight"])  # the head trained
    model, alphabet = build_model(ckpt)  # eval and transcribe read the grown alphabet
    assert alphabet.symbols == ["a", "b", "c", "£"] and model.num_classes == 5
    assert Transcriber(ckpt, device="cpu").alphabet == alphabet


def test_train_subset_is_seeded_nested_and_names_the_way_out() -> None:
    kept = [0, 2, 3, 5, 8, 9, 11, 12, 15, 20]
    small, large = train_subset(kept, 3, seed=7), train_subset(kept, 6, seed=7)
    assert small == train_subset(kept, 3, seed=7) and set(small) <= set(large) <= set(kept)
    assert small == sorted(small) and len(set(large)) == 6
    assert train_subset(kept, None, seed=7) == kept and train_subset(kept, 3, seed=0) != small
    with pytest.raises(ValueError, match=r"train_samples=11 but the train split has 10 usable samples: lower it"):
        train_subset(kept, 11, seed=7)
    with pytest.raises(ValueError, match=r"train_samples must be >= 1 or null, got 0"):
        train_subset(kept, 0, seed=7)
