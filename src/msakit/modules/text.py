"""Text encoder: a pretrained Hugging Face language model, fine-tuned or frozen."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from msakit.lm import load_language_model, pretrained_language_model_state
from msakit.modules.dropout import use_fast_dropout

#: Cost of one extra language-model call in :func:`length_groups`, in padded tokens: on one CPU
#: thread a MiniLM forward costs about 13 ms (reading its weights) plus 0.4 ms per token.
GROUP_OVERHEAD_TOKENS = 40


def length_groups(lengths: Sequence[int], overhead_tokens: int = GROUP_OVERHEAD_TOKENS
                  ) -> list[list[int]]:
    """Split clips into groups of similar length that minimise the tokens a padded LM computes.

    Each group is padded to its own longest clip, so it costs ``len(group) * max_length``
    tokens plus ``overhead_tokens`` per call; the optimum over contiguous runs of the clips
    sorted by length is found exactly (dynamic programming, ``O(B^2)``).

    Args:
        lengths: ``B`` token counts (real tokens, special tokens included).

    Returns:
        Lists of positions into ``lengths``, each sorted by length; together a permutation of
        ``range(B)``.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ordered = [lengths[i] for i in order]
    best = [0] + [float("inf")] * len(order)
    start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for begin in range(end):
            cost = best[begin] + (end - begin) * ordered[end - 1] + overhead_tokens
            if cost < best[end]:
                best[end], start[end] = cost, begin
    groups, end = [], len(order)
    while end:
        groups.append(order[start[end]:end])
        end = start[end]
    return groups[::-1]


class PretrainedTextEncoder(nn.Module):
    """Wraps a Hugging Face encoder and pools its last hidden states.

    The trainer recognises this module (``is_pretrained_language_model``) and gives its weights
    the language-model learning rate.

    A frozen LM (every weight fixed, no adapters) is a fixed feature extractor: it always runs in
    eval mode (no dropout), so its hidden states depend on the tokens alone and can be cached
    (:mod:`msakit.lm_cache`); models then pass them as ``hidden_states`` and the LM is skipped.

    Args:
        name_or_path: Hugging Face model name or local path.
        pooling: ``"cls"`` (first token, Self-MM), ``"mean"`` (masked mean, MISA) or ``"none"``.
        freeze: keep the pretrained weights fixed.
        freeze_layers: keep the first ``N`` transformer layers fixed (their parameters get
            ``requires_grad=False``); embeddings and later layers still train. MISA's official
            MOSEI setting freezes BERT layers 0-8 (``N = 9``).
        group_by_length: on the CPU, run the LM on groups of clips of similar length
            (:func:`length_groups`), each padded to its own longest clip, instead of one batch
            padded to the batch's longest clip. The states of every real token are the same (a
            clip's states do not depend on the other clips or on how much padding follows it);
            states at padding positions past a group's longest clip are zeros instead of what
            the LM computes for padding, so only a model that never reads padding positions may
            set it. With dropout (fine-tuning) the masks are drawn per group, a different random
            stream from one padded batch. Not on CUDA: reading the lengths would wait for the
            device, and padding costs a GPU little.
        reuse_embedding_gradient: on the CPU, while the word embeddings train, accumulate their
            gradient into one persistent dense buffer (see :meth:`reused_embedding_gradient`)
            instead of a fresh vocabulary x H matrix per backward. The same sums, up to their
            order; ``False`` is PyTorch's dense embedding gradient.

    Shapes:
        ``input_ids``, ``attention_mask``: ``(B, L)`` -> ``(B, H)`` pooled, or ``(B, L, H)``
        hidden states with ``pooling="none"``. With text context (:mod:`msakit.data.context`)
        ``lm_attention_mask`` ``(B, L)`` marks every token the LM reads (the neighbours' too)
        and ``attention_mask`` the clip's own tokens, which pooling reads.
    """

    is_pretrained_language_model = True

    def __init__(
        self,
        name_or_path: str,
        pooling: Literal["cls", "mean", "none"] = "cls",
        freeze: bool = False,
        freeze_layers: int = 0,
        group_by_length: bool = False,
        reuse_embedding_gradient: bool = True,
    ):
        super().__init__()
        # its nn.Dropout modules draw their masks with msakit's faster sampler
        self.model = use_fast_dropout(load_language_model(name_or_path))
        self.language_model_name = name_or_path
        self.pooling = pooling
        self.group_by_length = group_by_length
        self.reuse_embedding_gradient = reuse_embedding_gradient
        self._embedding_gradient: torch.Tensor | None = None  # not state: a scratch buffer
        self.hidden_size: int = self.model.config.hidden_size
        if freeze:
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)
            self.model.eval()
        if freeze_layers:
            layers = self.transformer_layers()
            if freeze_layers > len(layers):
                raise ValueError(
                    f"cannot freeze {freeze_layers} layers of {name_or_path!r}: it has "
                    f"{len(layers)}"
                )
            for layer in layers[:freeze_layers]:
                for parameter in layer.parameters():
                    parameter.requires_grad_(False)

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """The pretrained weights this encoder was built from, by this module's state-dict keys
        (the process-wide copy read from disk; do not modify). Checkpoints store a fine-tuned
        LM's weights as changes against them (:meth:`MSAModel.checkpoint_state_dict`)."""
        pretrained = pretrained_language_model_state(self.language_model_name)
        return {f"model.{key}": value for key, value in pretrained.items()}

    def transformer_layers(self) -> nn.ModuleList:
        """The LM's stack of transformer layers (``encoder.layer`` of BERT-like models)."""
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"{type(self.model).__name__} has no encoder.layer stack; freezing single "
                "layers needs a BERT-like model"
            )
        return layers

    @property
    def is_frozen(self) -> bool:
        """No weight of the LM trains (LoRA adapters or fine-tuning make this False)."""
        return not any(parameter.requires_grad for parameter in self.model.parameters())

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        if mode and self.is_frozen:
            self.model.eval()  # a fixed feature extractor: no dropout
        return self

    def language_model_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        group_inputs: Callable[[torch.Tensor | None, int], AbstractContextManager] | None = None,
    ) -> torch.Tensor:
        """The LM's last hidden states ``(B, L, H)``, unpooled (see ``group_by_length``).

        ``group_inputs(rows, length)``: a context manager entered around each LM call, given
        the call's rows of the batch (``None``: the whole batch) and its padded length, for
        models whose hooks inside the LM read per-clip inputs (CENET's audio/vision, MAG-BERT's
        gate): they hand each call the rows it computes.
        """
        call = group_inputs or (lambda rows, length: nullcontext())
        if not self.group_by_length or attention_mask.device.type != "cpu" or len(input_ids) < 2:
            with call(None, input_ids.shape[1]):
                return self.padded_language_model_states(input_ids, attention_mask,
                                                         token_type_ids)
        lengths = attention_mask.sum(1).tolist()
        groups = length_groups(lengths)
        if len(groups) == 1:
            with call(None, input_ids.shape[1]):
                return self.padded_language_model_states(input_ids, attention_mask,
                                                         token_type_ids)
        padded_length = input_ids.shape[1]
        # One word-embedding lookup for the whole batch: one (vocabulary x H) embedding
        # gradient per batch instead of one per group, and no sums of them.
        with self.reused_embedding_gradient():
            word_embeddings = self.model.get_input_embeddings()(input_ids)
        parts = []
        for group in groups:
            rows = torch.tensor(group)
            length = lengths[group[-1]]  # the group's longest clip
            with call(rows, length):
                states = self._run_language_model(
                    attention_mask[rows, :length],
                    None if token_type_ids is None else token_type_ids[rows, :length],
                    inputs_embeds=word_embeddings[rows, :length])
            parts.append(F.pad(states, (0, 0, 0, padded_length - length)))
        order = torch.tensor([row for group in groups for row in group])
        return torch.cat(parts)[torch.argsort(order)]

    def padded_language_model_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                                     token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The LM's states ``(B, L, H)`` for one padded batch, padding positions included (what
        the LM computes there), whatever ``group_by_length`` says."""
        with self.reused_embedding_gradient():
            return self._run_language_model(attention_mask, token_type_ids, input_ids=input_ids)

    @contextmanager
    def reused_embedding_gradient(self) -> Iterator[None]:
        """Word-embedding lookups inside this block give their gradient to a persistent buffer.

        A dense embedding gradient is a new ``(vocabulary, H)`` matrix per backward (30522 x 384
        floats for MiniLM, 47 MB): on the CPU its allocation and zero-fill cost more than the
        rest of the lookup's backward (fresh pages, ~38 ms per backward measured on a VM). Here
        the lookup yields a sparse gradient (the rows of the batch's tokens) and autograd adds
        it into ``.grad``, which is set to the buffer, zeroed, whenever the optimiser has
        cleared it: accumulation over micro-batches, clipping and the optimiser see a dense
        gradient with the same values. Only on the CPU (CUDA's caching allocator already
        reuses memory), in training with gradients enabled, while the embeddings train, and
        not under DDP (its reducer expects dense gradients).
        """
        embeddings = self.model.get_input_embeddings()
        weight = embeddings.weight
        if not (self.reuse_embedding_gradient and self.training and torch.is_grad_enabled()
                and weight.requires_grad and weight.device.type == "cpu"
                and isinstance(embeddings, nn.Embedding) and not embeddings.sparse
                and not _distributed()):
            yield
            return
        if weight.grad is None:
            buffer = self._embedding_gradient
            if (buffer is None or buffer.shape != weight.shape or buffer.dtype != weight.dtype
                    or buffer.device != weight.device):
                buffer = self._embedding_gradient = torch.zeros_like(weight)
            else:
                buffer.zero_()
            weight.grad = buffer
        embeddings.sparse = True
        try:
            yield
        finally:
            embeddings.sparse = False

    def _run_language_model(self, attention_mask: torch.Tensor,
                            token_type_ids: torch.Tensor | None, **tokens: torch.Tensor
                            ) -> torch.Tensor:
        """The LM's last hidden states for ``input_ids`` or their word embeddings
        ``inputs_embeds`` ``(B, L, H)`` (position and token-type embeddings added by the LM)."""
        kwargs = {**tokens, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self.model.forward.__code__.co_varnames:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(**kwargs).last_hidden_state

    def encode_batch(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """:meth:`forward` on a collated batch: its ``input_ids`` / ``attention_mask`` ``(B, L)``,
        ``token_type_ids`` if any, the cached states ``text_hidden`` ``(B, L, H)`` if any, and
        ``lm_attention_mask`` if the batch has text context."""
        context = ({} if batch.get("lm_attention_mask") is None
                   else {"lm_attention_mask": batch["lm_attention_mask"]})
        return self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                    hidden_states=batch.get("text_hidden"), **context)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
        lm_attention_mask: torch.Tensor | None = None,
        padded: bool = False,
    ) -> torch.Tensor:
        """Pooled (or full) LM states; ``hidden_states`` ``(B, L, H)`` are cached states of a
        frozen LM for these tokens (the batch's ``text_hidden``), used instead of running it.
        ``lm_attention_mask`` (text context): the tokens the LM attends to, when they are more
        than ``attention_mask``'s, the tokens pooled. ``padded``: one padded LM batch whatever
        ``group_by_length`` says, for a caller that reads the states at padding positions."""
        if hidden_states is None:
            states = self.padded_language_model_states if padded else self.language_model_states
            hidden = states(
                input_ids, attention_mask if lm_attention_mask is None else lm_attention_mask,
                token_type_ids)
        else:
            if not self.is_frozen:
                raise RuntimeError("cached language-model states were given to a language model "
                                   "that trains; set train.lm_cache=off or freeze it")
            if hidden_states.shape[:2] != input_ids.shape or hidden_states.shape[2] != self.hidden_size:
                raise ValueError(f"cached text states have shape {tuple(hidden_states.shape)}, "
                                 f"expected {(*input_ids.shape, self.hidden_size)}")
            hidden = hidden_states
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return hidden


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def text_states(encoder: PretrainedTextEncoder, batch: dict[str, Any]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """LM hidden states with padded tokens zeroed, and token lengths: ``(B, L, H)``, ``(B,)``."""
    attention_mask = batch["attention_mask"]
    hidden = encoder.encode_batch(batch)
    return hidden * attention_mask.unsqueeze(-1).to(hidden.dtype), attention_mask.sum(1).long()
