"""The decoder-only task: prompts (chat template or data.prompt_template) cut in the dialogue only, completions that
end with a supervised end token even when pad = EOS, left-padded batches whose masks come from lengths, the loss on
label positions alone, the audit that refuses broken rows before launch, and generation from the prompt alone."""
from __future__ import annotations

import pytest
import torch

from engine.config import config_from_dict
from engine.data import Dialogue, read_dialogues, tokenize_split
from engine.errors import UserError
from engine.tasks import get_task, task_of_config
from engine.tasks.causal import CausalCollator, CausalTask, generation_batch, stop_ids

TASK = CausalTask()


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_llama_dir):
    """The tiny Llama's tokenizer: BPE with a ChatML chat template, pad distinct from EOS."""
    from engine.modeling import load_tokenizer
    from engine.schema import ModelConfig

    return load_tokenizer(ModelConfig(name_or_path=str(tiny_llama_dir)), ["#Person1#", "#Person2#"])


@pytest.fixture
def eos_pad_tokenizer(chat_tokenizer):
    """What most LLM tokenizers ship: no pad token of their own, so pad = EOS; and no chat template."""
    import copy

    tok = copy.deepcopy(chat_tokenizer)
    tok.pad_token = tok.eos_token
    tok.chat_template = None
    return tok


def cfg(**data):
    return config_from_dict({"model": {"name_or_path": "x"}, "data": {"max_source_length": 96,
                                                                      "max_target_length": 24, **data}})


def rows(mini_data, n=8):
    return read_dialogues(mini_data["train_csv"], require_summary=True, limit=n)


def test_decoder_only_configs_are_the_causal_task():
    from transformers import AutoConfig, BartConfig

    llama = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    assert task_of_config(llama) == "causal" and task_of_config(BartConfig()) == "seq2seq"
    assert get_task("causal").name == "causal"
    with pytest.raises(UserError, match="model.task: seq2seq set, but llama is a decoder-only model"):
        task_of_config(llama, "seq2seq")


def test_chat_template_prompt_is_cut_in_the_dialogue_and_the_completion_ends_its_turn(chat_tokenizer, mini_data):
    encoder = TASK.encoder(cfg(), chat_tokenizer)
    assert encoder.template == ""  # the tokenizer's chat template
    data = tokenize_split(rows(mini_data), chat_tokenizer, encoder, with_labels=True, cache_dir=None)
    im_end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop_ids(chat_tokenizer) == sorted({chat_tokenizer.eos_token_id, im_end})
    text = chat_tokenizer.decode(data[0]["input_ids"])
    assert text.startswith("<|im_start|>user\nSummarize the following dialogue.\n\n#Person1#")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n"), "the template's end is never cut"
    assert max(len(data[i]["input_ids"]) for i in range(len(data))) == 96  # long dialogues were cut to fit
    for i in range(len(data)):
        assert len(data[i]["labels"]) <= 24 and data[i]["labels"][-1] == im_end
    summary = chat_tokenizer.decode(data[0]["labels"][:-1])
    assert rows(mini_data)[0].references[0].startswith(summary.strip()[:20])


def test_plain_template_and_korean_instruction(eos_pad_tokenizer, mini_data):
    korean = TASK.encoder(config_from_dict({"model": {"name_or_path": "x"}, "evaluation": {"lang": "ko"}}),
                          eos_pad_tokenizer)
    assert korean.instruction == "다음 대화를 요약하세요." and korean.template.endswith("Summary:")
    encoder = TASK.encoder(cfg(prompt_template="Dialogue:\n{dialogue}\nTL;DR:"), eos_pad_tokenizer)
    row = tokenize_split(rows(mini_data, 1), eos_pad_tokenizer, encoder, with_labels=True, cache_dir=None)[0]
    assert eos_pad_tokenizer.decode(row["input_ids"]).startswith("<s>Dialogue:\n#Person1#")
    assert eos_pad_tokenizer.decode(row["input_ids"]).endswith("\nTL;DR:")
    assert row["labels"][-1] == eos_pad_tokenizer.eos_token_id == eos_pad_tokenizer.pad_token_id
    with pytest.raises(UserError, match=r"data.prompt_template: must contain \{dialogue\}"):
        TASK.encoder(cfg(prompt_template="Summarize:"), eos_pad_tokenizer)
    with pytest.raises(UserError, match="leave no room for the dialogue"):
        tokenize_split(rows(mini_data, 1), eos_pad_tokenizer, TASK.encoder(cfg(max_source_length=8), eos_pad_tokenizer),
                       with_labels=True, cache_dir=None)


def test_left_padded_batch_supervises_and_attends_the_eos_even_when_pad_is_eos(eos_pad_tokenizer, mini_data):
    encoder = TASK.encoder(cfg(), eos_pad_tokenizer)
    data = tokenize_split(rows(mini_data), eos_pad_tokenizer, encoder, with_labels=True, cache_dir=None)
    items = [data[i] for i in range(4)]
    batch = CausalCollator(eos_pad_tokenizer, pad_to_multiple_of=8)(items)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and batch["logits_to_keep"] == max(len(it["labels"]) for it in items) + 1
    for row, item in zip(range(4), items):
        n = len(item["input_ids"]) + len(item["labels"])
        assert batch["attention_mask"][row].tolist() == [0] * (width - n) + [1] * n
        assert batch["position_ids"][row, -n:].tolist() == list(range(n))
        assert batch["labels"][row, -len(item["labels"]):].tolist() == item["labels"]  # the EOS (= pad) included
        assert (batch["labels"][row, :-len(item["labels"])] == -100).all()
        assert batch["attention_mask"][row, -1] == 1 and batch["input_ids"][row, -1] == eos_pad_tokenizer.eos_token_id
    prompts = generation_batch(eos_pad_tokenizer.pad_token_id, [it["input_ids"] for it in items])
    for row, item in zip(range(4), items):  # the prompt alone, left-padded: the start of the training sequence
        fed = prompts["input_ids"][row][prompts["attention_mask"][row] == 1].tolist()
        assert fed == item["input_ids"]


def test_the_loss_is_computed_on_label_positions_only(tiny_llama_dir, chat_tokenizer, mini_data, tmp_path):
    """Same loss as the model's own cross-entropy over full logits, with logits kept for the last K positions only."""
    from transformers import AutoModelForCausalLM, Seq2SeqTrainingArguments

    from engine.recorder import NullRecorder
    from engine.tasks.causal import CausalTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.resize_token_embeddings(len(chat_tokenizer))
    TASK.prepare(model, chat_tokenizer)
    data = tokenize_split(rows(mini_data), chat_tokenizer, TASK.encoder(cfg(), chat_tokenizer), with_labels=True,
                          cache_dir=None)
    collator = CausalCollator(chat_tokenizer, 8)
    batch = collator([data[i] for i in range(4)])
    trainer = CausalTrainer(model=model, args=Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                       report_to="none"),
                            processing_class=chat_tokenizer, data_collator=collator, recorder=NullRecorder())
    seen = {}
    hook = model.lm_head.register_forward_hook(lambda m, args, out: seen.update(rows=args[0].shape[1]))
    loss = trainer.compute_loss(model, dict(batch))
    hook.remove()
    assert seen["rows"] == batch["logits_to_keep"] < batch["input_ids"].shape[1] / 2
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"]).logits
    expected = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                                 ignore_index=-100)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


class DroppedEnd:
    """An encoder with the bug the audit exists for: completions without their end token (users' code that tokenizes
    the summary alone); `key` keeps it apart in any cache."""

    def __init__(self, inner):
        self.inner, self.key = inner, ("dropped-end", *inner.key)

    def encode(self, tokenizer, dialogues, with_labels):
        sources, targets = self.inner.encode(tokenizer, dialogues, with_labels)
        return sources, [t[:-1] for t in targets]


def test_audit_names_the_row_that_would_train_wrong(chat_tokenizer, eos_pad_tokenizer, mini_data):
    from engine.datasets import Datasets

    good = rows(mini_data, 4)
    config = cfg()
    config.data.train_file, config.data.eval_file = "train.csv", "dev.csv"

    def audit(tokenizer, train_rows, encoder=None):
        encoder = encoder or TASK.encoder(config, tokenizer)
        train = tokenize_split(train_rows, tokenizer, encoder, with_labels=True, cache_dir=None)
        evals = tokenize_split(good, tokenizer, TASK.encoder(config, tokenizer), with_labels=True, cache_dir=None)
        TASK.audit(config, tokenizer, Datasets(train=train, eval=evals))

    audit(chat_tokenizer, good)  # nothing to say
    audit(eos_pad_tokenizer, good)
    emptied = Dialogue("train_empty", good[0].dialogue, [""])
    with pytest.raises(UserError, match=r"data.train_file: train.csv: row 'train_empty': the summary is empty"):
        audit(chat_tokenizer, [*good, emptied])
    with pytest.raises(UserError, match=r"row 'train_0': the completion ends with token \d+, not an end of sequence"):
        audit(eos_pad_tokenizer, good, DroppedEnd(TASK.encoder(config, eos_pad_tokenizer)))


def test_generation_continues_the_prompt_and_returns_the_new_tokens_only(tiny_llama_dir, chat_tokenizer, mini_data):
    from engine.predict import summarize
    from engine.schema import GenerationConfig
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model.resize_token_embeddings(len(chat_tokenizer))
    TASK.prepare(model, chat_tokenizer)
    data = tokenize_split(rows(mini_data, 6), chat_tokenizer, TASK.encoder(cfg(), chat_tokenizer), with_labels=False,
                          cache_dir=None)
    g = GenerationConfig(num_beams=1, max_new_tokens=5)
    batched = summarize(model, chat_tokenizer, data, g, batch_size=6, task=TASK, progress=False)
    one_by_one = summarize(model, chat_tokenizer, data, g, batch_size=1, task=TASK, progress=False)
    assert batched == one_by_one, "left padding is masked: a row's summary does not depend on its batch"
    assert all("<|im_start|>" not in s and "Summarize" not in s for s in batched), "the prompt is taken off"
    sampled = GenerationConfig(num_beams=1, max_new_tokens=5, do_sample=True, temperature=1.5)
    first = summarize(model, chat_tokenizer, data, sampled, batch_size=6, task=TASK, seed=3, progress=False)
    assert first == summarize(model, chat_tokenizer, data, sampled, batch_size=6, task=TASK, seed=3, progress=False)
