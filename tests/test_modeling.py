"""engine.modeling + launcher.model_init: loading with speaker tags, decoding that keeps them, `dialsum init-model`."""
from __future__ import annotations

import csv
import hashlib
import math
import shutil

import pytest
import torch

from engine.tasks.seq2seq import Seq2SeqEncoder
from engine.data import find_placeholder_tokens, read_dialogues, tokenize_split
from engine.errors import UserError
from launcher.model_init import SIZES, build_model, init_model, train_tokenizer
from engine.modeling import add_speaker_tokens, decode_summaries, load_model_and_tokenizer
from engine.schema import ModelConfig
from launcher.cli import main as dialsum

TAGS = ["#Address#", "#Person1#", "#Person2#", "#PhoneNumber#"]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)), TAGS)


@pytest.fixture()
def small_train_csv(tmp_path, mini_data):
    """The first 100 mini train rows: enough for a tokenizer, fast to train on."""
    with open(mini_data["train_csv"], newline="", encoding="utf-8") as src:
        rows = list(csv.reader(src))[:101]
    path = tmp_path / "train100.csv"
    with open(path, "w", newline="", encoding="utf-8") as dst:
        csv.writer(dst).writerows(rows)
    return path


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


# -- init-model -------------------------------------------------------------------------------------------------

def test_tiny_model_layout(tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(_digests(tiny_model_dir))
    assert not [p for p in tiny_model_dir.parent.iterdir() if p.name.endswith(".tmp")]
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert (config.model_type, config.d_model, config.encoder_layers, config.decoder_layers) == ("bart", 64, 2, 2)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.max_position_embeddings) == (4, 128, 1024)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(tok) == config.vocab_size == 4000
    assert [tok.convert_tokens_to_ids(t) for t in ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]] == [0, 1, 2, 3, 4]
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id, config.decoder_start_token_id) == (1, 0, 2, 2)
    text = "#Person1#: Hi, Mr. Smith. 안녕하세요"  # byte-level: nothing is unknown, Korean round-trips
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids, skip_special_tokens=True) == text


def test_init_model_is_deterministic_per_seed(tmp_path, small_train_csv):
    a = init_model(small_train_csv, tmp_path / "a", vocab_size=600, seed=3)
    init_model(small_train_csv, tmp_path / "b", vocab_size=600, seed=3)
    init_model(small_train_csv, tmp_path / "c", vocab_size=600, seed=4)
    assert a.vocab_size == 600 and a.out_dir == tmp_path / "a"
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    da, dc = _digests(tmp_path / "a"), _digests(tmp_path / "c")
    assert da["tokenizer.json"] == dc["tokenizer.json"] and da["model.safetensors"] != dc["model.safetensors"]


def test_small_size_config():
    tok = train_tokenizer(["#Person1#: hello there, how are you?"] * 5, vocab_size=300)
    model = build_model(tok, SIZES["small"], seed=0)
    c = model.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.decoder_attention_heads, c.decoder_ffn_dim) == (256, 3, 3, 4, 1024)
    assert SIZES["small"].vocab_size == 8000 and SIZES["tiny"].vocab_size == 4000


@pytest.mark.parametrize("kwargs, message", [
    ({"size": "huge"}, "--size: unknown size 'huge'"),
    ({"vocab_size": 50}, "--vocab-size: 50 is too small"),
])
def test_init_model_rejects_bad_arguments(tmp_path, small_train_csv, kwargs, message):
    with pytest.raises(UserError, match=message):
        init_model(small_train_csv, tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_init_model_refuses_a_non_empty_out_dir(tmp_path, small_train_csv):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists and is not empty"):
        init_model(small_train_csv, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_init_model(tmp_path, small_train_csv, capsys):
    out = tmp_path / "m"
    assert dialsum(["init-model", "--from-data", str(small_train_csv), "--out", str(out), "--vocab-size", "500"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()
    assert dialsum(["init-model", "--from-data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"dialsum: error: --from-data: no such file: {tmp_path / 'nope.csv'}"


# -- loading ------------------------------------------------------------------------------------------------------

def test_speaker_tags_become_single_special_tokens(loaded):
    model, tok = loaded
    assert len(tok) == 4000 + len(TAGS)
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    pieces = tok.convert_ids_to_tokens(tok("#Person1#: call #PhoneNumber# now")["input_ids"])
    assert pieces[:2] == ["<s>", "#Person1#"] and "#PhoneNumber#" in pieces
    assert model.config.decoder_start_token_id == model.generation_config.decoder_start_token_id == 2


def test_no_tags_means_no_resize(tiny_model_dir):
    model, tok = load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)), [])
    assert len(tok) == model.get_input_embeddings().num_embeddings == 4000


def test_adding_tags_keeps_existing_additional_special_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert add_speaker_tokens(tok, ["#Person1#", "#Person2#"]) == 2
    assert add_speaker_tokens(tok, ["#Person2#", "#Address#"]) == 1
    assert add_speaker_tokens(tok, ["#Person1#"]) == 0
    assert {"#Person1#", "#Person2#", "#Address#"} <= set(tok.all_special_tokens)
    assert len(tok) == 4003


def test_separate_tokenizer_path(tiny_model_dir):
    model, tok = load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir), tokenizer=str(tiny_model_dir)), [])
    assert len(tok) == 4000


@pytest.mark.parametrize("cfg, message", [
    (ModelConfig(name_or_path=""), "model.name_or_path: empty"),
    (ModelConfig(name_or_path="./no/such/model"), "model.name_or_path: no such directory: ./no/such/model"),
    (ModelConfig(name_or_path="no-such-org/no-such-model"), "model.name_or_path: cannot load"),
    (ModelConfig(name_or_path="{tiny}", tokenizer="/no/such/tok"), "model.tokenizer: no such directory"),
    (ModelConfig(name_or_path="{empty}"), "model.name_or_path: {empty} has no config.json"),
    (ModelConfig(name_or_path="{tiny}", tokenizer="{empty}"), "model.tokenizer: cannot load a tokenizer from"),
    (ModelConfig(name_or_path="{broken}"), "model.name_or_path: cannot load a seq2seq model from"),
])
def test_bad_model_source_is_a_user_error(tmp_path, tiny_model_dir, cfg, message):
    (tmp_path / "empty").mkdir()
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")  # config and tokenizer, but no weights
    (broken / "model.safetensors").unlink()
    fill = {"tiny": str(tiny_model_dir), "empty": str(tmp_path / "empty"), "broken": str(broken)}
    cfg = ModelConfig(name_or_path=cfg.name_or_path.format(**fill), tokenizer=cfg.tokenizer.format(**fill))
    with pytest.raises(UserError) as info:
        load_model_and_tokenizer(cfg, [])
    assert message.format(**fill) in str(info.value) and "\n" not in str(info.value)


# -- decoding -----------------------------------------------------------------------------------------------------

def test_decode_keeps_speaker_tags_and_drops_control_tokens(loaded):
    _, tok = loaded
    text = "#Person1# asks #Person2# for the #PhoneNumber# of the shop."
    ids = tok(text_target=text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    # generate()-style output: decoder start, text, eos, pad; a stray <mask>/<unk> inside; label-style -100 padding
    noisy = [tok.eos_token_id] + ids[:4] + [tok.mask_token_id, tok.unk_token_id] + ids[4:] + [tok.pad_token_id] * 3
    labels = ids + [-100] * (len(noisy) - len(ids))
    assert decode_summaries(tok, torch.tensor([noisy, labels])) == [text, text]
    assert decode_summaries(tok, [[tok.pad_token_id] * 3]) == [""]


def test_decode_collapses_whitespace(loaded):
    _, tok = loaded
    ids = tok(text_target="  #Person1#   is\n\nhappy . ")["input_ids"]
    assert decode_summaries(tok, [ids]) == ["#Person1# is happy ."]


# -- a real step ----------------------------------------------------------------------------------------------------

def test_forward_backward_and_generate(mini_data, tiny_model_dir):
    from transformers import DataCollatorForSeq2Seq

    rows = read_dialogues(mini_data["train_csv"], require_summary=True, limit=4)
    model, tok = load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)), find_placeholder_tokens(rows))
    ds = tokenize_split(rows, tok, Seq2SeqEncoder(128, 32), with_labels=True,
                        cache_dir=None)
    batch = DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100)([ds[i] for i in range(4)])
    assert "decoder_input_ids" in batch  # built from labels with decoder_start_token_id
    model.train()
    loss = model(**batch).loss
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.get_input_embeddings().weight.grad[tok.convert_tokens_to_ids("#Person1#")].abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=8,
                             num_beams=2)
    summaries = decode_summaries(tok, out)
    assert len(summaries) == 4 and all(isinstance(s, str) for s in summaries)


ZERO3_LOAD = """
import json, sys
import deepspeed, torch, torch.distributed as dist
from safetensors.torch import load_file
from transformers import AutoTokenizer
from transformers.integrations import is_deepspeed_zero3_enabled
from engine.modeling import load_model, partitioned_loading
from engine.schema import ModelConfig
from engine.tasks import get_task

dist.init_process_group("gloo")
model_dir, out = sys.argv[1], sys.argv[2]
ds = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
      "zero_optimization": {"stage": 3}}
tokenizer = AutoTokenizer.from_pretrained(model_dir)
with partitioned_loading(ds):
    model = load_model(ModelConfig(name_or_path=model_dir), tokenizer, get_task("causal"))
    inside = is_deepspeed_zero3_enabled()
saved = load_file(f"{model_dir}/model.safetensors")
name = next(k for k in saved if k.endswith("mlp.down_proj.weight"))
param = dict(model.named_parameters())[name]
with deepspeed.zero.GatheredParameters([param]):
    same = bool(torch.equal(param.data, saved[name].to(param.dtype)))
json.dump({"local": sum(p.ds_tensor.numel() for p in model.parameters()),
           "full": sum(p.ds_numel for p in model.parameters()), "saved": sum(t.numel() for t in saved.values()),
           "same": same, "inside": inside, "after": is_deepspeed_zero3_enabled()},
          open(f"{out}/rank{dist.get_rank()}.json", "w"))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_zero3_ranks_load_their_partition_of_the_checkpoint(tmp_path, tiny_llama_dir):
    """Under ZeRO-3 each rank builds only its half of the parameters (zero.Init), and a weight gathered on either rank
    is the checkpoint's (rank 0 read the file, rank 1 got it from rank 0); the ZeRO-3 setting ends with the load."""
    import json
    import os
    import sys

    from launch_helpers import run_processes

    script = tmp_path / "load.py"
    script.write_text(ZERO3_LOAD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}
    [done] = run_processes([[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(tiny_llama_dir), str(tmp_path)]], 300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["full"] == r["saved"]  # every checkpoint tensor, as its partition
        assert r["local"] <= r["full"] // 2 + 1024, "a rank holds its half, not the model"
        assert r["same"] and r["inside"] and not r["after"]
    assert ranks[0]["local"] + ranks[1]["local"] >= ranks[0]["full"]
