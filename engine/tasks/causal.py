"""The decoder-only task (Llama/SOLAR, Qwen2/Qwen3, Gemma 2/3, Mistral, GPT-NeoX/Polyglot-Ko, EXAONE-style remote
code): a summarizer that continues a prompt.

A row becomes two token sequences, kept apart in the dataset: the **prompt** (the tokenizer's chat template with a
user turn holding the instruction and the dialogue and the assistant turn opened, or `data.prompt_template`), at most
`data.max_source_length` tokens, cut in the dialogue only; and the **completion** (the summary, at most
`data.max_target_length` tokens with its end: the template's end-of-turn token, or EOS). Training feeds prompt +
completion; generation is fed the prompt alone, so the prompt at inference is, token for token, the one trained on.

Batches pad on the LEFT, with attention masks and position ids from the lengths (never from `ids == pad`: with pad =
EOS, as most of these tokenizers have, that would hide the EOS the model must learn to stop at). The loss is on the
completion only (labels -100 on prompt and padding, the end token supervised) and is computed on the label positions
alone: the model returns logits for the last `logits_to_keep` positions, so a 128k-152k vocabulary never materialises
fp32 logits for the prompt. TRL's SFTTrainer (prompt-completion data, completion-only loss) is not used: it replaces
the Trainer this engine's OOM backoff, token agreement and evaluation by generation are built on, and it computes
the logits of every prompt token.
"""
from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch

from engine.data import Dialogue
from engine.errors import UserError
from engine.oom import OOMBackoffTrainer
from engine.schema import DialsumConfig, GenerationConfig
from engine.generation import search_and_sampling

INSTRUCTIONS = {"en": "Summarize the following dialogue.", "ko": "다음 대화를 요약하세요."}
DEFAULT_TEMPLATE = "{instruction}\n\n{dialogue}\n\nSummary:"
DIALOGUE = "\x00DIALSUM-DIALOGUE\x00"  # stands for the dialogue while the template is rendered, then split on
SUMMARY = "\x00DIALSUM-SUMMARY\x00"
TEMPLATE_KWARGS = {"enable_thinking": False}  # Qwen3's templates: a summary, not a reasoning trace


@dataclass(frozen=True)
class Prompt:
    """A row's token ids: prompt (before + dialogue + after) and completion (lead + summary + end)."""
    prompt: list[int]
    completion: list[int]


@dataclass(frozen=True)
class TemplateParts:
    """The template's own token ids, rendered once: around the dialogue, before and after the summary."""
    before: list[int]
    after: list[int]
    lead: list[int]
    end: list[int]
    space: bool  # the summary follows plain text ("Summary:"): it starts with a space


def chat_parts(tokenizer, instruction: str) -> tuple[str, str, str, str]:
    """(before dialogue, after dialogue, before summary, after summary) as the chat template renders a user turn with
    the instruction and the dialogue, the assistant turn opened (the generation prompt), then the summary in it."""
    user = [{"role": "user", "content": f"{instruction}\n\n{DIALOGUE}"}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True, **TEMPLATE_KWARGS)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": SUMMARY}], tokenize=False,
                                         **TEMPLATE_KWARGS)
    if not full.startswith(prompt):
        raise UserError(f"model.tokenizer: the chat template's generation prompt is not how it renders the same "
                        f"conversation with the summary ({prompt[-40:]!r} vs {full[len(prompt) - 40:][:80]!r}); "
                        "set data.prompt_template to a template with {dialogue}")
    before, after = prompt.split(DIALOGUE)
    lead, rest = full[len(prompt):].split(SUMMARY)
    return before, after, lead, rest


def chat_end(tokenizer, rest_ids: list[int]) -> list[int]:
    """The ids that close the assistant turn, up to its first special token (the end-of-turn: Llama-3's
    <|eot_id|>, ChatML's <|im_end|>); what follows it (a newline) is never generated. EOS if the turn has none."""
    special = set(tokenizer.all_special_ids)
    stop = next((i for i, t in enumerate(rest_ids) if t in special), None)
    return rest_ids[:stop + 1] if stop is not None else [*rest_ids, tokenizer.eos_token_id]


def stop_ids(tokenizer) -> list[int]:
    """What generation stops at: EOS, and the chat template's end-of-turn token where there is a chat template
    (a model trained with `data.prompt_template` ends with EOS; one trained on the chat template with its turn end)."""
    ids = {tokenizer.eos_token_id}
    if getattr(tokenizer, "chat_template", None):
        rest = chat_parts(tokenizer, INSTRUCTIONS["en"])[3]
        ids.add(chat_end(tokenizer, tokenizer(rest, add_special_tokens=False)["input_ids"])[-1])
    return sorted(ids - {None})


@dataclass(frozen=True)
class CausalEncoder:
    """Prompt and completion ids of each dialogue (see the module doc); `key` names what they depend on."""
    template: str            # data.prompt_template, '' for the tokenizer's chat template
    instruction: str
    max_source_length: int
    max_target_length: int
    chat_template_hash: str  # the tokenizer's chat template (it keys the cache too)

    @property
    def key(self) -> tuple:
        return ("causal", self.template, self.instruction, self.max_source_length, self.max_target_length,
                self.chat_template_hash)

    def encode(self, tokenizer, dialogues: list[Dialogue], with_labels: bool):
        parts = self.parts(tokenizer)
        sources, targets = [], []
        for d in dialogues:
            row = self.encode_one(tokenizer, parts, d)
            sources.append(row.prompt)
            targets.append(row.completion)
        return sources, (targets if with_labels else None)

    def parts(self, tokenizer) -> TemplateParts:
        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

        if self.template:
            before, after = self.template.format(instruction=self.instruction, dialogue=DIALOGUE).split(DIALOGUE)
            start = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
            return TemplateParts(start + ids(before), ids(after), [], [tokenizer.eos_token_id], space=True)
        before, after, lead, rest = chat_parts(tokenizer, self.instruction)
        return TemplateParts(ids(before), ids(after), ids(lead), chat_end(tokenizer, ids(rest)), space=False)

    def encode_one(self, tokenizer, parts: TemplateParts, d: Dialogue) -> Prompt:
        fixed = len(parts.before) + len(parts.after)
        if self.max_source_length - fixed < 1:
            raise UserError(f"data.max_source_length: {self.max_source_length} tokens leave no room for the dialogue "
                            f"in the prompt (the template takes {fixed})")
        dialogue = tokenizer(d.dialogue, add_special_tokens=False)["input_ids"]
        budget = self.max_source_length - fixed
        dialogue = dialogue[:budget] if tokenizer.truncation_side == "right" else dialogue[-budget:]
        summary = d.references[0] if d.references else ""
        summary_ids = tokenizer((" " if parts.space else "") + summary, add_special_tokens=False)["input_ids"]
        room = max(0, self.max_target_length - len(parts.lead) - len(parts.end))
        return Prompt(prompt=parts.before + dialogue + parts.after, completion=parts.lead + summary_ids[:room] + parts.end)


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts a sequence with BOS on its own (Llama does, Qwen and GPT-NeoX do not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def _left_pad(rows: list[list[int]], value: int, width: int) -> torch.Tensor:
    return torch.tensor([[value] * (width - len(r)) + r for r in rows], dtype=torch.long)


def _width(lengths: list[int], multiple: int) -> int:
    longest = max(lengths)
    return -(-longest // multiple) * multiple


def _mask_and_positions(lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From the lengths alone: 1 on a row's tokens, 0 on its left padding; positions 0.. on the tokens."""
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], dtype=torch.long)
    return mask, (mask.cumsum(-1) - 1).clamp(min=0)


class CausalCollator:
    """Training batches: prompt + completion, left-padded to the longest row rounded up to the plan's multiple;
    labels -100 but on the completion; `logits_to_keep`: the last positions whose logits the loss needs. With
    `for_generation`, evaluation batches also carry the prompts alone (`prompt_input_ids`, `prompt_attention_mask`)."""

    def __init__(self, tokenizer, pad_to_multiple_of: int = 1, for_generation: bool = False):
        self.pad_id, self.multiple, self.for_generation = tokenizer.pad_token_id, pad_to_multiple_of, for_generation

    def __call__(self, rows: list[dict]) -> dict[str, Any]:
        sequences = [r["input_ids"] + r["labels"] for r in rows]
        labels = [[-100] * len(r["input_ids"]) + r["labels"] for r in rows]
        lengths = [len(s) for s in sequences]
        width = _width(lengths, self.multiple)
        mask, positions = _mask_and_positions(lengths, width)
        batch = {"input_ids": _left_pad(sequences, self.pad_id, width), "attention_mask": mask,
                 "position_ids": positions, "labels": _left_pad(labels, -100, width),
                 "logits_to_keep": max(len(r["labels"]) for r in rows) + 1}
        if self.for_generation:
            batch.update(generation_batch(self.pad_id, [r["input_ids"] for r in rows], self.multiple, prefix="prompt_"))
        return batch


def generation_batch(pad_id: int, prompts: list[list[int]], multiple: int = 1, prefix: str = "") -> dict:
    """Prompts left-padded (generation continues each row from its last token), with their masks."""
    lengths = [len(p) for p in prompts]
    width = _width(lengths, multiple)
    mask, _ = _mask_and_positions(lengths, width)
    return {f"{prefix}input_ids": _left_pad(prompts, pad_id, width), f"{prefix}attention_mask": mask}


class CausalTrainer(OOMBackoffTrainer):
    """The engine's Trainer for decoder-only models: the loss on label positions only, evaluation by generation
    from the prompt alone (the prompt taken off what it returns), and the teacher-forced loss beside it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_collator = CausalCollator(self.processing_class, self.data_collator.multiple, for_generation=True)
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation rows carry their prompts for generation as well."""
        collator, self.data_collator = self.data_collator, self.eval_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Cross-entropy over the completion tokens, from the logits of the last `logits_to_keep` positions. In
        training, a token mean over the whole optimizer step (`num_items_in_batch`: every rank's completion tokens
        of every accumulated micro-batch, so a long summary weighs by its tokens, as in TRL and transformers' own
        losses; times the ranks, whose gradients DDP and DeepSpeed average); alone (evaluation), the batch's mean."""
        inputs = dict(inputs)
        labels, keep = inputs.pop("labels"), inputs.pop("logits_to_keep")
        if self._keeps_logits:
            outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
            logits = outputs.logits
        else:  # a model without the argument: its full logits, cut here
            outputs = model(**inputs, use_cache=False)
            logits = outputs.logits[:, -keep:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1),
                                                 labels[:, -(keep - 1):].flatten(), ignore_index=-100,
                                                 label_smoothing=self.args.label_smoothing_factor,
                                                 reduction="mean" if num_items_in_batch is None else "sum")
        if num_items_in_batch is not None:
            ranks = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
            loss = loss / num_items_in_batch * ranks
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        inputs = self._prepare_inputs(inputs)
        prompt = {"input_ids": inputs.pop("prompt_input_ids"), "attention_mask": inputs.pop("prompt_attention_mask")}
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs).detach()
        if prediction_loss_only:
            return loss, None, None
        with self.generation_model() as generator:
            generated = generator.generate(**prompt, **self.synced_generation())
        new = generated[:, prompt["input_ids"].shape[1]:]
        pad = self.model.generation_config.max_new_tokens
        if new.shape[1] < pad:
            new = torch.nn.functional.pad(new, (0, pad - new.shape[1]), value=self.processing_class.pad_token_id)
        return loss, new, inputs["labels"]


class CausalTask:
    name = "causal"
    token_mean_across_ranks = True  # CausalTrainer.compute_loss: the step's token mean over every rank

    def model_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def prepare(self, model, tokenizer) -> None:
        """Padding ids, and generation stopping where a completion ends (saved with the model's generation config,
        so `dialsum predict` stops there too)."""
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = stop_ids(tokenizer)
        # CausalTrainer.compute_loss normalises by `num_items_in_batch` (the step's completion tokens, over its
        # accumulated micro-batches and every rank), so the Trainer counts them and does not divide by accumulation
        model.accepts_loss_kwargs = True

    def encoder(self, cfg: DialsumConfig, tokenizer) -> CausalEncoder:
        d = cfg.data
        template = d.prompt_template
        if not template and not getattr(tokenizer, "chat_template", None):
            template = DEFAULT_TEMPLATE
        if template and "{dialogue}" not in template:
            raise UserError("data.prompt_template: must contain {dialogue} (and may contain {instruction})")
        chat = getattr(tokenizer, "chat_template", None) or ""
        return CausalEncoder(template=template, instruction=d.instruction or INSTRUCTIONS[cfg.evaluation.lang],
                             max_source_length=d.max_source_length, max_target_length=d.max_target_length,
                             chat_template_hash="" if template else hashlib.sha256(chat.encode()).hexdigest()[:16])

    def training_collator(self, tokenizer, model, pad_to_multiple_of: int) -> CausalCollator:
        return CausalCollator(tokenizer, pad_to_multiple_of)

    def generation_batch(self, tokenizer, rows: list[dict]):
        from transformers import BatchEncoding

        return BatchEncoding(generation_batch(tokenizer.pad_token_id, [r["input_ids"] for r in rows]))

    def generation_kwargs(self, g: GenerationConfig) -> dict[str, Any]:
        """`model.generate` arguments: new tokens counted as such (a decoder-only model's output begins with its
        prompt)."""
        return {**search_and_sampling(g), "max_new_tokens": g.max_new_tokens,
                "min_new_tokens": g.min_new_tokens or None, "max_length": None, "min_length": None}

    def summary_ids(self, generated, batch):
        """What follows the prompt."""
        return generated[:, batch["input_ids"].shape[1]:]

    def trainer_class(self):
        return CausalTrainer

    audits_before_launch = True

    def audit(self, cfg: DialsumConfig, tokenizer, datasets) -> None:
        """Every training and evaluation row, before any rank starts (engine/datasets.py encodes them, the launcher
        calls this): a one-line UserError naming the file and the row for the four ways decoder-only fine-tuning
        silently goes wrong: a row with nothing to learn (every label masked), a completion whose end is not
        supervised (the model never learns to stop), an end token hidden by the attention mask in a padded batch
        (pad = EOS), or a generation prompt that is not, token for token, the start of the training sequence."""
        stops = set(stop_ids(tokenizer))
        parts = self.encoder(cfg, tokenizer).parts(tokenizer)
        collate = CausalCollator(tokenizer)
        for key, dataset in (("data.train_file", datasets.train), ("data.eval_file", datasets.eval)):
            path = getattr(cfg.data, key.split(".")[1])
            longest = max(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]) + len(dataset[i]["labels"]))
            for i in range(len(dataset)):
                row = dataset[i]
                where = f"{key}: {path}: row {dataset.fnames[i]!r}"
                if len(row["labels"]) <= len(parts.lead) + len(parts.end):
                    raise UserError(f"{where}: the summary is empty once tokenized: every label is masked, nothing "
                                    "to learn")
                if row["labels"][-1] not in stops:
                    raise UserError(f"{where}: the completion ends with token {row['labels'][-1]}, not an end of "
                                    f"sequence ({sorted(stops)}): the model would never learn to stop")
                batch = collate([row, dataset[longest]])  # padded beside the longest row of its split
                if batch["attention_mask"][0, -1] != 1 or batch["labels"][0, -1] != row["labels"][-1]:
                    raise UserError(f"{where}: the end token is masked out of attention or loss in a padded batch")
                prompt = generation_batch(tokenizer.pad_token_id, [row["input_ids"], dataset[longest]["input_ids"]])
                fed = prompt["input_ids"][0][prompt["attention_mask"][0] == 1].tolist()
                trained = batch["input_ids"][0][batch["attention_mask"][0] == 1].tolist()
                if fed != trained[:len(fed)] or len(fed) != len(row["input_ids"]):
                    raise UserError(f"{where}: the generation prompt is not the start of the training sequence "
                                    "token for token")

    def flops_per_token(self, num_params: int, cfg: DialsumConfig) -> float:
        """Every counted token (prompt and summary) passes the whole model."""
        from engine.callbacks.profiler import estimate_flops_per_token

        return estimate_flops_per_token(num_params, frozen=cfg.training.method != "full")

