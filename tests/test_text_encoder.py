"""The pretrained text encoder's length groups: fewer padded tokens, the same states."""

from __future__ import annotations

import itertools

import pytest
import torch
from _real_batches import real_batch

from msakit.data import load_dataset
from msakit.modules.text import PretrainedTextEncoder, length_groups


def padded_tokens(lengths, groups, overhead):
    return sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)


@pytest.mark.parametrize("lengths", [[5], [7, 7, 7], [3, 40, 4, 38, 5], [12, 9, 30, 31, 8, 50]])
def test_length_groups_partition_the_clips_optimally(lengths):
    overhead = 10
    groups = length_groups(lengths, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    # the optimum over every way to cut the sorted clips into contiguous runs
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best = min(
        padded_tokens(lengths, [order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))],
                      overhead)
        for k in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), k)
    )
    assert padded_tokens(lengths, groups, overhead) == best


def test_length_groups_split_short_from_long_clips_and_keep_similar_ones_together():
    assert length_groups([4, 50, 5, 48], overhead_tokens=10) == [[0, 2], [3, 1]]
    assert length_groups([20, 21, 22], overhead_tokens=10) == [[0, 1, 2]]


@pytest.fixture(scope="module")
def batch(mosi_word_aligned):
    rows = [22, 78, 25, 18, 106, 114, 131, 154]  # 4 clips of 4 tokens, 4 of 39 to 48
    return real_batch(load_dataset(mosi_word_aligned), rows)


@pytest.mark.parametrize("pooling", ["mean", "cls", "none"])
def test_grouped_states_equal_one_padded_batch_at_every_real_token(batch, pooling):
    torch.manual_seed(0)
    encoder = PretrainedTextEncoder("all-MiniLM-L6-v2", pooling=pooling).eval()
    lengths = batch["attention_mask"].sum(1)
    assert len(length_groups(lengths.tolist())) > 1, "the batch must make several groups"
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    outputs, grads = {}, {}
    for grouped in (False, True):
        encoder.group_by_length = grouped
        encoder.zero_grad(set_to_none=True)
        out = encoder(*args)
        weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        if pooling == "none":
            out = out * batch["attention_mask"][..., None]  # heads read real tokens only
        (out * weights).sum().backward()
        outputs[grouped] = out.detach()
        grads[grouped] = {n: p.grad.clone() for n, p in encoder.named_parameters()
                          if p.grad is not None}
    assert outputs[True].shape == outputs[False].shape
    torch.testing.assert_close(outputs[True], outputs[False], atol=1e-5, rtol=1e-4)
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], atol=5e-5, rtol=1e-3,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_groups_share_one_word_embedding_lookup(batch):
    """The vocabulary-sized embedding gradient is built once per batch, not once per group."""
    encoder = PretrainedTextEncoder("all-MiniLM-L6-v2", pooling="mean", group_by_length=True)
    lookups = []
    encoder.model.get_input_embeddings().register_forward_hook(
        lambda module, inputs, output: lookups.append(tuple(output.shape)))
    encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).sum().backward()
    assert len(length_groups(batch["attention_mask"].sum(1).tolist())) > 1
    assert lookups == [(*batch["input_ids"].shape, encoder.hidden_size)]


def test_grouping_is_off_by_default_and_for_a_single_clip(batch):
    encoder = PretrainedTextEncoder("all-MiniLM-L6-v2", pooling="none").eval()
    assert encoder.group_by_length is False
    encoder.group_by_length = True
    with torch.no_grad():
        alone = encoder(batch["input_ids"][:1], batch["attention_mask"][:1])
    assert alone.shape[:2] == batch["input_ids"][:1].shape


def test_padded_states_ignore_grouping_and_keep_the_padding_positions(batch):
    """What the LM cache stores: one padded batch, even from an encoder that groups."""
    encoder = PretrainedTextEncoder("all-MiniLM-L6-v2", pooling="none").eval()
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    with torch.no_grad():
        encoder.group_by_length = False
        reference = encoder.language_model_states(*args)
        encoder.group_by_length = True
        padded = encoder.padded_language_model_states(*args)
        grouped = encoder.language_model_states(*args)
    torch.testing.assert_close(padded, reference, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(grouped, reference, atol=1e-3)  # grouped: zeros past each group


@pytest.mark.parametrize("grouped", [False, True])
def test_reused_embedding_gradient_equals_the_dense_one_and_keeps_its_memory(batch, grouped):
    """Two micro-batches accumulated, an optimiser step, then another batch: the word-embedding
    gradient is PyTorch's dense one (up to summation order), always in the same buffer."""
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    halves = [tuple(a[:4] for a in args), tuple(a[4:] for a in args)]
    grads, buffers = {}, []
    for reuse in (False, True):
        torch.manual_seed(0)
        encoder = PretrainedTextEncoder("all-MiniLM-L6-v2", pooling="mean",
                                        group_by_length=grouped, reuse_embedding_gradient=reuse)
        encoder.train()
        for module in encoder.modules():  # the same function in both runs
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        weight = encoder.model.get_input_embeddings().weight
        optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3, fused=True)
        for step in range(2):
            for half in halves:  # gradient accumulation over two micro-batches
                encoder(*half).pow(2).sum().backward()
            assert weight.grad is not None and not weight.grad.is_sparse
            if reuse:
                buffers.append(weight.grad.data_ptr())
            grads[reuse, step] = weight.grad.clone()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert not encoder.model.get_input_embeddings().sparse  # only inside the lookup
    for step in range(2):
        assert grads[True, step].abs().sum() > 0
        torch.testing.assert_close(grads[True, step], grads[False, step], atol=1e-6, rtol=1e-5)
    assert buffers[0] == buffers[1]  # the second step's gradient reused the first one's memory


def test_no_gradient_buffer_without_training(batch):
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    frozen = PretrainedTextEncoder("all-MiniLM-L6-v2", freeze=True).train()
    tuned = PretrainedTextEncoder("all-MiniLM-L6-v2").eval()
    for encoder in (frozen, tuned):
        with torch.no_grad():
            encoder(*args)
        assert encoder._embedding_gradient is None
        assert encoder.model.get_input_embeddings().weight.grad is None
