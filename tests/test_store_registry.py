"""Registry: versions, compare-and-set `best`, aliases + audit, refs, search, compare, delete, checkpoint metadata."""
from __future__ import annotations

import json
import struct

import pytest

from engine.errors import UserError
from engine.store import Registry, extract_checkpoint_metadata, open_store, parse_model_ref


@pytest.fixture
def registry(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'dialsum.db'}")
    yield Registry(store)
    store.close()


def _register(registry: Registry, value: float | None, *, name: str = "kobart", ckpt: str = "ckpt", tags=(),
              greater_is_better: bool = True, architecture: str = "BartForConditionalGeneration", **metrics) -> int:
    metrics = {"rouge": value, **metrics} if value is not None else metrics
    return registry.register(name, run_id=f"run-{value}", checkpoint_dir=ckpt, metrics=metrics, metric="rouge",
                             greater_is_better=greater_is_better, metadata={"architecture": architecture}, tags=tags)


def test_versions_and_best_compare_and_set(registry):
    assert [_register(registry, v) for v in (0.3, 0.2, 0.5, 0.5, None, 0.4)] == [1, 2, 3, 4, 5, 6]
    assert registry.get("kobart", "best")["version"] == 3  # a tie (v4) does not move it, a missing metric neither
    assert registry.get("kobart", "latest")["version"] == 6
    assert registry.get("kobart")["version"] == 6
    assert registry.get("kobart", 2)["metrics"] == {"rouge": 0.2}
    moves = [(a["alias"], a["from_version"], a["to_version"]) for a in registry.audit("kobart")]
    assert moves == [("best", None, 1), ("best", 1, 3)]
    assert "beats v1" in registry.audit("kobart")[1]["reason"]
    assert _register(registry, 0.1, name="other") == 1  # versions count per model


def test_lower_is_better(registry):
    for loss in (2.0, 1.0, 1.5):
        _register(registry, loss, name="loss-model", greater_is_better=False)
    assert registry.get("loss-model", "best")["version"] == 2


def test_promote_and_audit(registry):
    for v in (0.1, 0.2):
        _register(registry, v)
    registry.promote("kobart", 1, "production", reason="A/B winner")
    registry.promote("kobart", 2, "production")
    registry.promote("kobart", 2, "production")  # no move, no audit row
    assert registry.get("kobart", "production")["version"] == 2
    assert registry.get("kobart", 2)["aliases"] == ["best", "production"]
    production = [a for a in registry.audit("kobart") if a["alias"] == "production"]
    assert [(a["from_version"], a["to_version"], a["reason"]) for a in production] == [
        (None, 1, "A/B winner"), (1, 2, "promoted")]
    for alias in ("best", "latest", "2x", "a b"):
        with pytest.raises(UserError):
            registry.promote("kobart", 1, alias)
    with pytest.raises(UserError, match="has no version 9 .versions: 1, 2."):
        registry.promote("kobart", 9, "staging")
    with pytest.raises(UserError, match="no model 'ghost'"):
        registry.get("ghost")
    with pytest.raises(UserError, match="no version at 'staging'"):
        registry.get("kobart", "staging")


def test_parse_model_ref():
    assert parse_model_ref("kobart") == ("kobart", "latest")
    assert parse_model_ref("kobart:3") == ("kobart", 3)
    assert parse_model_ref("team/kobart@best") == ("team/kobart", "best")
    for bad in ("kobart:x", ":3", "kobart@", "@best"):
        with pytest.raises(UserError):
            parse_model_ref(bad)


def test_list_search_and_compare(registry):
    _register(registry, 0.3, tags=["ko"], bleu=1.0)
    _register(registry, 0.6, tags=["ko", "big"], bleu=2.0)
    _register(registry, 0.5, name="t5", architecture="T5ForConditionalGeneration")
    listed = {m["name"]: m for m in registry.list_models()}
    assert listed["kobart"]["versions"] == 2 and listed["kobart"]["aliases"] == {"best": 2}
    assert listed["kobart"]["best_value"] == 0.6 and listed["t5"]["latest_version"] == 1
    assert [v["version"] for v in registry.list_versions("kobart")] == [1, 2]
    assert [v["ref"] for v in registry.search(metric="rouge", min_value=0.4)] == ["kobart:2", "t5:1"]
    assert [v["ref"] for v in registry.search(tag="ko")] == ["kobart:1", "kobart:2"]
    assert [v["ref"] for v in registry.search(architecture="t5")] == ["t5:1"]
    assert [v["ref"] for v in registry.search(metric="bleu")] == ["kobart:2", "kobart:1"]
    with pytest.raises(UserError, match="--min needs --metric"):
        registry.search(min_value=0.1)
    diff = registry.compare("kobart", 1, "best")
    assert diff["metrics"]["rouge"] == {"a": 0.3, "b": 0.6, "delta": pytest.approx(0.3)}
    assert diff["metadata"] == {}


def test_delete_removes_rows_and_directory_and_moves_best(registry, tmp_path):
    dirs = []
    for i, v in enumerate((0.3, 0.9, 0.5)):
        d = tmp_path / f"ckpt-{i}"
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "weights").write_text("x")
        dirs.append(d)
        _register(registry, v, ckpt=str(d))
    registry.promote("kobart", 2, "production")
    registry.delete("kobart", 2)
    assert not dirs[1].exists() and dirs[0].exists() and dirs[2].exists()
    assert not any(p.name.startswith(".ckpt-1.deleting") for p in tmp_path.iterdir())
    assert [v["version"] for v in registry.list_versions("kobart")] == [1, 3]
    assert registry.get("kobart", "best")["version"] == 3  # the best remaining version
    with pytest.raises(UserError):
        registry.get("kobart", "production")
    last = [(a["alias"], a["from_version"], a["to_version"]) for a in registry.audit("kobart")][-2:]
    assert sorted(last) == [("best", 2, 3), ("production", 2, None)]
    assert _register(registry, 0.1) == 4  # numbers are never reused
    with pytest.raises(UserError, match="has no version 2"):
        registry.delete("kobart", 2)


def test_failed_delete_puts_the_directory_back(registry, tmp_path, monkeypatch):
    d = tmp_path / "ckpt"
    d.mkdir()
    _register(registry, 0.3, ckpt=str(d))

    def broken(fn):
        raise RuntimeError("database went away")

    monkeypatch.setattr(registry.store, "write", broken)
    with pytest.raises(RuntimeError):
        registry.delete("kobart", 1)
    assert d.is_dir() and not [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt")]
    monkeypatch.undo()
    assert registry.get("kobart", 1)["checkpoint_dir"] == str(d)


def test_extract_checkpoint_metadata_from_a_real_checkpoint(tmp_path):
    from safetensors.torch import load_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    config = BartConfig(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=96)
    BartForConditionalGeneration(config).save_pretrained(tmp_path)
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)

    meta = extract_checkpoint_metadata(tmp_path)
    stored = sum(t.numel() for t in load_file(tmp_path / "model.safetensors").values())
    assert meta["parameter_count"] == stored
    assert meta["architecture"] == "BartForConditionalGeneration" and meta["model_type"] == "bart"
    assert (meta["vocab_size"], meta["max_positions"], meta["dtypes"]) == (64, 96, ["F32"])
    assert meta["tokenizer_class"] == json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"]
    assert "tokenizer.json" in meta["tokenizer_files"] and meta["weight_files"] == ["model.safetensors"]


def test_extract_checkpoint_metadata_rejects_bad_dirs(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        extract_checkpoint_metadata(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": 10}))
    assert extract_checkpoint_metadata(tmp_path)["parameter_count"] is None  # no safetensors: unknown, not 0
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"nojsn")
    with pytest.raises(UserError, match="header is not JSON"):
        extract_checkpoint_metadata(tmp_path)
