"""The text task: a deterministic corpus from the standard library, a clear error without it, the induction diagnostic."""

from __future__ import annotations

import hashlib

import pytest
import torch

import compinterp as ci
from compinterp.tasks import text
from compinterp.tasks.train import train


def test_corpus_is_deterministic_and_split_by_file(tmp_path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "site-packages").mkdir()
    for name in ("a.py", "b.py", "pkg/c.py", "tests/t.py", "site-packages/s.py", "notes.txt"):
        (tmp_path / name).write_text(f"# {name}\n" * 50)
    root = str(tmp_path)
    assert text.files(root) == ("a.py", "b.py", "pkg/c.py")
    train_files = [f for f in text.files(root) if not text.held_out(f)]
    expected = b"".join((tmp_path / f).read_bytes() + b"\n" for f in train_files)[:100]
    assert text.corpus("train", 100, root) == expected == text.corpus("train", 100, root)
    about = text.describe("train", 100, root)
    assert about["bytes"] == 100 and about["sha256"] == hashlib.sha256(expected).hexdigest()


def test_missing_stdlib_is_named(tmp_path) -> None:
    with pytest.raises(ci.InputError, match=f"standard library directory {tmp_path / 'gone'} does not exist"):
        text.corpus("train", 10, str(tmp_path / "gone"))
    with pytest.raises(ci.InputError, match="holds no .py files"):
        text.files(str(tmp_path))
    with pytest.raises(ci.InputError, match="fewer than"):
        (tmp_path / "x.py").write_text("pass\n")
        text.corpus("test" if text.held_out("x.py") else "train", 10_000, str(tmp_path))


def test_real_stdlib_splits_are_disjoint_and_stable() -> None:
    train_part, test_part = text.corpus("train", 20_000), text.corpus("test", 20_000)
    assert len(train_part) == len(test_part) == 20_000 and train_part[:2000] != test_part[:2000]
    assert text.describe("test", 20_000)["sha256"] == hashlib.sha256(test_part).hexdigest()
    tokens, positions, labels = text.windows(train_part, 64)
    assert tokens.shape == (312, 64) and int(tokens.max()) < 256 and (positions[3] == torch.arange(64)).all()


def test_repeated_sequences_and_the_induction_score() -> None:
    tokens, positions, labels = text.repeated(3, 8, seed=1, alphabet=range(16))
    assert (tokens[:, :8] == tokens[:, 8:]).all() and all(len(set(row[:8].tolist())) == 8 for row in tokens)
    assert (labels[:, :-1] == tokens[:, 1:]).all()
    with pytest.raises(ci.InputError, match="distinct tokens"):
        text.repeated(1, 20, alphabet=range(16))


def test_train_text_reports_bits_per_byte_and_induction(one_thread: None) -> None:
    task = text.task(context=16, width=16, heads=2, layers=2, hidden=16, train_bytes=8192, test_bytes=2048)
    run = train(task, seed=0, progress=False)
    numbers = run.to_json()
    assert numbers["task"] == "text" and numbers["steps"] == 32
    assert 0 < numbers["bits_per_byte"] < 9 and set(numbers["induction"]) >= {"loss_first", "loss_second", "score"}
    assert numbers["options"]["corpus"]["train"]["bytes"] == 8192


def test_repeat_makes_the_asked_fraction_of_windows_periodic_evenly_spread() -> None:
    tokens, _, labels = text.windows(text.corpus("train", 200 * 64 + 1), 64)
    new_tokens, new_labels = text.repeat(tokens.clone(), labels.clone(), 0.25)
    again = text.repeat(tokens.clone(), labels.clone(), 0.25)
    assert (again[0] == new_tokens).all() and (again[1] == new_labels).all()
    changed = (new_tokens != tokens).any(1)
    assert int(changed.sum()) == 50 and changed.nonzero().flatten().tolist() == list(range(3, 200, 4))
    assert (new_tokens[changed, 32:] == new_tokens[changed, :32]).all()
    assert (new_tokens[changed, :32] == tokens[changed, :32]).all()
    assert (new_labels[:, :-1] == new_tokens[:, 1:]).all()
    assert (new_labels[changed, -1] == new_tokens[changed, 32]).all()
    assert int((text.repeat(tokens.clone(), labels.clone(), 0.1)[0] != tokens).any(1).sum()) == 20
    with pytest.raises(ci.InputError, match="fractions of repeated windows"):
        text.repeat(tokens, labels, 0.5, random=0.6)


def test_repeat_can_repeat_random_printable_bytes_instead_of_text() -> None:
    tokens, _, labels = text.windows(text.corpus("train", 200 * 64 + 1), 64)
    new_tokens, new_labels = text.repeat(tokens.clone(), labels.clone(), 0.2, random=0.05)
    periodic = (new_tokens[:, 32:] == new_tokens[:, :32]).all(1)
    kept = (new_tokens[:, :32] == tokens[:, :32]).all(1)
    assert int(periodic.sum()) == 50 and int((periodic & ~kept).sum()) == 10 and int((~periodic & ~kept).sum()) == 0
    assert set(new_tokens[periodic & ~kept].unique().tolist()) <= set(text.PRINTABLE)
    assert (new_labels[:, :-1] == new_tokens[:, 1:]).all()


def test_the_task_repeats_only_training_windows_and_records_it() -> None:
    task = text.task(context=16, width=16, heads=2, layers=2, hidden=16, train_bytes=8192, test_bytes=2048,
                     repeat=0.5, random=0.25)
    tokens, _, _ = task.load("train", "transformer")
    assert int((tokens[:, 8:] == tokens[:, :8]).all(1).sum()) >= 3 * len(tokens) // 4
    assert (task.options["repeat"], task.options["random"]) == (0.5, 0.25)
    plain = text.task(context=16, width=16, heads=2, layers=2, hidden=16, train_bytes=8192, test_bytes=2048,
                      repeat=0.0, random=0.0)
    assert (task.load("test", "transformer")[0] == plain.load("test", "transformer")[0]).all()


def test_the_diagnostic_draws_printable_bytes_for_a_byte_model() -> None:
    tokens, _, _ = text.repeated(64, 64, seed=0)
    assert set(tokens.unique().tolist()) == set(range(32, 127)) == set(text.PRINTABLE)
    byte_model = text.task(context=16, width=16, heads=2, layers=2, hidden=16, train_bytes=8192,
                           test_bytes=2048).build()
    assert text.alphabet(byte_model) == text.PRINTABLE
    assert set(text.corpus("train", 100_000)) <= set(text.PRINTABLE) | {10}
