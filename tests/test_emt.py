"""EMT-DLFR's missing positions and its two views on real MOSI clips (the numbers against the
authors' code are in tests/parity/test_emt_parity.py)."""

from __future__ import annotations

import pytest
import torch

from msakit.config import build_config
from msakit.data import load_dataset, make_loader
from msakit.errors import ConfigError
from msakit.models import FeatureDims, create_model
from msakit.models.emt import counter_uniform

ROWS = list(range(12))


@pytest.fixture(scope="module")
def split(mosi_word_aligned):
    return load_dataset(mosi_word_aligned).split("all").subset(ROWS)


def batch_of(split, rows: list[int]) -> dict:
    loader = make_loader(split.subset(rows), "all-MiniLM-L6-v2", batch_size=len(rows),
                         word_aligned=False)
    batch = next(iter(loader))
    batch["index"] = torch.tensor(rows)  # the clips' rows in the 12-clip split
    return batch


def build(overrides: list[str], dims: FeatureDims):
    torch.manual_seed(0)
    return create_model(build_config("emt", overrides).model, dims)


def dims_of(batch: dict) -> FeatureDims:
    return FeatureDims(batch["audio"].shape[-1], batch["vision"].shape[-1])


def test_counter_uniform_depends_only_on_seed_row_and_position():
    rows = torch.tensor([3, 7, 3])
    values = counter_uniform(5, rows, 40)
    assert values.shape == (3, 40) and values.dtype == torch.float32
    assert torch.equal(values[0], values[2]) and not torch.equal(values[0], values[1])
    assert torch.equal(counter_uniform(5, torch.tensor([7]), 40)[0], values[1])
    assert not torch.equal(counter_uniform(6, rows, 40), values)
    many = counter_uniform(111, torch.arange(200), 100)
    assert 0 <= float(many.min()) and float(many.max()) < 1
    assert abs(float(many.mean()) - 0.5) < 0.01  # 20,000 draws: the mean's sd is 0.002
    assert abs(float((many > 0.3).float().mean()) - 0.7) < 0.01


def test_per_clip_masks_do_not_depend_on_the_batch(split):
    together = batch_of(split, ROWS)
    model = build(["model.missing_rate=0.4"], dims_of(together)).train()
    masks = model.missing_masks(together)
    for i in (0, 5, 11):
        alone = model.missing_masks(batch_of(split, [ROWS[i]]))
        for m in ("text", "audio", "vision"):
            steps = alone[m].shape[1]
            assert torch.equal(alone[m][0], masks[m][i, :steps]), (m, i)
            assert not masks[m][i, steps:].any()
    attention = together["attention_mask"].bool()
    lengths = attention.sum(1)
    text = masks["text"]
    assert text[:, 0].all() and text[torch.arange(len(ROWS)), lengths - 1].all()  # [CLS], [SEP]
    assert not (text & ~attention).any()
    inner = attention.clone()
    inner[:, 0] = False
    inner[torch.arange(len(ROWS)), lengths - 1] = False
    kept = float(text[inner].float().mean())
    assert 0.45 < kept < 0.75, kept  # about 1 - 0.4 of the words between them


def test_training_step_has_every_term_and_eval_is_one_view(split):
    batch = batch_of(split, ROWS[:6])
    model = build(["model.missing_rate=0.3", "model.attn_dropout=0",
                   "model.ff_dropout=0", "model.post_fusion_dropout=0"], dims_of(batch))
    model.train()
    output = model(batch)
    assert set(output.losses) == set(model.config.loss_weights)
    assert all(torch.isfinite(v) for v in output.losses.values())
    assert all(float(output.losses[f"reconstruction_{m}"].detach()) > 0
               for m in ("text", "audio", "vision"))
    # the incomplete view differs from the complete one (words replaced, frames zeroed)
    assert not torch.allclose(output.prediction, output.extras["pred_complete"])
    sum(model.config.loss_weights[k] * v for k, v in output.losses.items()).backward()
    assert model.reconstruct["audio"].weight.grad.abs().sum() > 0
    assert model.projectors["gmc"].linear.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        output = model(batch)
    assert torch.equal(output.prediction, output.extras["pred_complete"])
    assert all(float(output.losses[f"reconstruction_{m}"]) == 0
               for m in ("text", "audio", "vision"))


def test_a_training_batch_of_one_clip_uses_the_running_statistics(split):
    """The official code breaks on a one-clip batch (squeeze, BatchNorm); msakit trains on it."""
    batch = batch_of(split, [ROWS[3]])
    model = build(["model.missing_rate=0.2"], dims_of(batch)).train()
    output = model(batch)
    assert output.prediction.shape == (1,)
    assert all(torch.isfinite(v) for v in output.losses.values())


def test_config_refuses_a_width_the_heads_do_not_divide():
    with pytest.raises(ConfigError, match="divisible"):
        build_config("emt", ["model.d_model=30", "model.heads=4"])
