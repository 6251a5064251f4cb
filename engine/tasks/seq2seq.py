"""The encoder-decoder task (BART, T5, mT5, KoBART, Pegasus): everything the engine does differently for these models.

The dialogue (with `data.source_prefix`) is the encoder's input and the summary its labels, tokenized apart and
truncated apart; the decoder is fed the labels shifted right behind `decoder_start_token_id`, which generation
starts from too (so N new tokens is a max_length of N + 1). Batches pad on the right; labels pad with -100.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.compat import fast_encode
from engine.data import Dialogue
from engine.schema import DialsumConfig, GenerationConfig
from engine.generation import search_and_sampling


@dataclass(frozen=True)
class Seq2SeqEncoder:
    """Dialogue ids (prefixed, truncated to max_source_length) and summary ids (truncated to max_target_length)."""
    max_source_length: int
    max_target_length: int
    source_prefix: str = ""

    @property
    def key(self) -> tuple:
        return ("seq2seq", self.max_source_length, self.max_target_length, self.source_prefix)

    def encode(self, tokenizer, dialogues: list[Dialogue], with_labels: bool):
        sources = fast_encode(tokenizer, [self.source_prefix + d.dialogue for d in dialogues], self.max_source_length)
        if not with_labels:
            return sources, None
        targets = tokenizer(text_target=[d.references[0] for d in dialogues], max_length=self.max_target_length,
                            truncation=True)["input_ids"]
        return sources, targets


class Seq2SeqTask:
    name = "seq2seq"
    token_mean_across_ranks = False  # the model's own loss: each micro-batch's mean

    def model_class(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def prepare(self, model, tokenizer) -> None:
        """The ids training and generation need, where the checkpoint leaves them unset."""
        config = model.config
        if config.pad_token_id is None:
            config.pad_token_id = tokenizer.pad_token_id
        if config.decoder_start_token_id is None:
            # labels are shifted right behind this id; generation starts from it
            start = model.generation_config.decoder_start_token_id
            config.decoder_start_token_id = start if start is not None else (
                tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id)
        if model.generation_config.decoder_start_token_id is None:
            model.generation_config.decoder_start_token_id = config.decoder_start_token_id
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = config.pad_token_id
        # Seq2seq LMs (BART, T5, ...) take **kwargs in forward but return a plain mean loss that ignores
        # `num_items_in_batch`; the Trainer would then skip its division by gradient accumulation and scale gradients
        # by the accumulation count. Telling it the truth keeps the loss and gradients right for any accumulation.
        model.accepts_loss_kwargs = False

    def encoder(self, cfg: DialsumConfig, tokenizer=None) -> Seq2SeqEncoder:
        d = cfg.data
        return Seq2SeqEncoder(d.max_source_length, d.max_target_length, d.source_prefix)

    def training_collator(self, tokenizer, model, pad_to_multiple_of: int):
        """Pads a batch to its longest row rounded up to the plan's multiple; labels pad with -100 (no loss)."""
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100,
                                      pad_to_multiple_of=pad_to_multiple_of)

    def generation_batch(self, tokenizer, rows: list[dict]):
        """Dialogue ids padded on the right and masked: a row's summary does not depend on its batch."""
        return tokenizer.pad([{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in rows],
                             return_tensors="pt")

    def generation_kwargs(self, g: GenerationConfig) -> dict[str, Any]:
        """`model.generate` arguments as evaluation applies them: lengths as max_length/min_length, where the decoder
        start token counts (so N new tokens is N + 1), and any max_new_tokens/min_new_tokens saved with the
        checkpoint cleared, since they would override them."""
        return {**search_and_sampling(g), "max_length": g.max_new_tokens + 1,
                "min_length": g.min_new_tokens + 1 if g.min_new_tokens else 0, "max_new_tokens": None,
                "min_new_tokens": None}

    def summary_ids(self, generated, batch):
        """The decoder's output is the summary (behind its start token, which decoding drops)."""
        return generated

    def trainer_class(self):
        from engine.oom import OOMBackoffTrainer

        return OOMBackoffTrainer

    # nothing to audit before launch: dialogue and summary are tokenized apart, and the collator masks label padding
    # with -100 whatever the pad token is (the causal task audits its rows: `audit`)
    audits_before_launch = False

    def flops_per_token(self, num_params: int, cfg: DialsumConfig) -> float:
        """Training FLOPs per counted token; the counted tokens are the encoder's (source) tokens."""
        from engine.callbacks.profiler import estimate_flops_per_token

        d = cfg.data
        return estimate_flops_per_token(num_params, target_to_source=d.max_target_length / d.max_source_length,
                                        frozen=cfg.training.method != "full")
