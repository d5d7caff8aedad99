#!/usr/bin/env python3
"""Builds small random-weight cross-encoders of every model family the engine
runs, with Hugging Face transformers (no hub: tokenizers are trained here on
the fixture's own text), and records transformers' token ids and logits for
a fixed set of pairs: the reference the Rust engine is tested against.

    python3 scripts/family_fixtures.py               # tests/fixtures/families/<name>/
    python3 scripts/family_fixtures.py --real-sizes DIR
        # random weights at the published sizes (XLM-RoBERTa base, ModernBERT
        # base, ELECTRA base, DistilBERT base) into DIR/<name>/, for speed
        # measurements (nothing recorded; not committed)

Makes .venv-golden with torch + transformers on first use (as
scripts/golden.py does). Every weight is random, layer norms and the head
included, so no family's parity can pass by an identity or a zero; every
fixture's pairs include some longer than its max length (truncation), and
ModernBERT's include some longer than its window.

The weights are seeded and the same on every run, and so are the byte-level
BPE vocabularies; the WordPiece and Unigram trainers order their ties by a
hash, so those vocabularies (and the ids and logits recorded with them)
change from run to run. Each run's fixtures agree with themselves; the
committed ones are the reference.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-golden"
OUT = ROOT / "tests" / "fixtures" / "families"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import golden  # noqa: E402  (the queries and passages of the default model's fixture)


def crate_tokenizers_version() -> str:
    """The `tokenizers` crate version in Cargo.lock: the Python binding is
    pinned to it, since its truncation of pairs changes between patch
    releases (0.23.3 gives the odd token of a longest-first cut to the other
    text than 0.23.2), and the reference must truncate as the server does."""
    lock = (ROOT / "Cargo.lock").read_text().split("[[package]]")
    for package in lock:
        if 'name = "tokenizers"' in package:
            return package.split('version = "')[1].split('"')[0]
    raise SystemExit("family_fixtures: no tokenizers crate in Cargo.lock")


def ensure_venv() -> None:
    """Re-executes inside a venv that has torch, transformers and the
    tokenizers binding of the crate's version."""
    if os.environ.get("CE_GOLDEN_IN_VENV") == "1":
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    pinned = crate_tokenizers_version()
    probe = subprocess.run(
        [str(python), "-c", f"import torch, transformers, tokenizers; assert tokenizers.__version__ == {pinned!r}"],
        capture_output=True,
    )
    if probe.returncode != 0:
        subprocess.check_call(
            [str(python), "-m", "pip", "install", "--quiet", "torch", "transformers", f"tokenizers=={pinned}"]
        )
    env = dict(os.environ, CE_GOLDEN_IN_VENV="1")
    os.execve(str(python), [str(python), __file__, *sys.argv[1:]], env)


def corpus():
    return golden.QUERIES + golden.PASSAGES + [p["passage"] for p in golden.edge_pairs()]


def pairs():
    """Ten real pairs, the edge cases, and two far over every max length."""
    real = golden.real_pairs()[::7][:10]
    long_passage = " ".join(golden.PASSAGES[:4])
    extra = [
        {"kind": "long passage truncated", "query": golden.QUERIES[1], "passage": long_passage},
        {"kind": "both sides truncated", "query": " ".join(golden.PASSAGES[5:7]), "passage": long_passage},
    ]
    return real + golden.edge_pairs() + extra


def train_tokenizer(kind: str, vocab: int):
    """A tokenizer.json of the family's kind, trained on the fixture text."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    text = corpus()
    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(text, trainers.WordPieceTrainer(vocab_size=vocab, special_tokens=specials))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        return tok, dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    def byte_level_bpe(specials):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, initial_alphabet=alphabet))
        return tok

    if kind == "bytelevel-roberta":
        tok = byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
        return tok, dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    if kind == "unigram-xlmr":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(text, trainers.UnigramTrainer(vocab_size=vocab, special_tokens=specials, unk_token="<unk>"))
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", 0), ("</s>", 2)],
        )
        return tok, dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    if kind in ("bytelevel-qwen", "bytelevel-qwen-words"):
        # Qwen2/Qwen3's tokenizer.json: NFC, the GPT-4-style split regex,
        # byte-level BPE without a prefix space, no special tokens added to
        # a text; "yes" and "no" are whole tokens (the yes/no head reads them).
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        split = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        prompt = [QWEN_PREFIX, QWEN_SUFFIX, QWEN_INSTRUCTION] * 20
        if kind == "bytelevel-qwen-words":
            # The benchmark workload's words (crates/bench/data), so that a
            # large vocabulary holds them whole, as Qwen's 151k one holds
            # common English words: the real model's tokens per pair.
            words = []
            for name in ["words_common.txt", "words_rare.txt"]:
                words += (ROOT / "crates" / "bench" / "data" / name).read_text().split()
            text = text + [" ".join(words[i : i + 16]) for i in range(0, len(words), 16)] * 3
        tok.train_from_iterator(text + prompt + ["yes", "no"] * 200, trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, initial_alphabet=alphabet))
        for word in ["yes", "no"]:
            assert tok.token_to_id(word) is not None, f"{word!r} is not a token"
        return tok, dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if kind == "bytelevel-modernbert":
        tok = byte_level_bpe(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
        )
        return tok, dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    raise ValueError(kind)


# Qwen3-Reranker's prompt, as its model card writes it.
QWEN_PREFIX = '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
QWEN_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
# A request's own instruction, for the pairs that carry one.
OWN_INSTRUCTION = "Judge whether the passage defines the term in the query"


def qwen_pairs():
    """The pairs of the decoder fixtures: the encoders' pairs but the one
    whose query alone passes the max length (the model card's recipe cuts
    into the query there, ours keeps the prompt and cuts the query only to
    leave a document room: a Rust test states that rule), and three with
    a request's own instruction."""
    chosen = [p for p in pairs() if p["kind"] != "both sides truncated"]
    own = [dict(p, kind=p["kind"] + ", own instruction", instruction=OWN_INSTRUCTION) for p in chosen[:3]]
    return chosen + own


def qwen_reference(tokenizer, model, pair, max_length, yes_no):
    """Qwen3-Reranker's model card: prefix tokens + the formatted pair,
    truncated longest-first to what the prefix and suffix leave + suffix
    tokens; the last position's logits (of "no" and "yes" for the causal
    LM, the classifier's otherwise)."""
    import torch

    prefix = tokenizer.encode(QWEN_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(QWEN_SUFFIX, add_special_tokens=False)
    instruction = pair.get("instruction", QWEN_INSTRUCTION)
    text = f"<Instruct>: {instruction}\n<Query>: {pair['query']}\n<Document>: {pair['passage']}"
    body = tokenizer([text], padding=False, truncation="longest_first", return_attention_mask=False, max_length=max_length - len(prefix) - len(suffix))["input_ids"][0]
    ids = prefix + body + suffix
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids])).logits
        logits = out[0, -1] if yes_no else out[0]
    if yes_no:
        no, yes = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
        return ids, [logits[no].item(), logits[yes].item()]
    return ids, logits.tolist()


def randomize(model, torch) -> None:
    """Every parameter random: matrices scaled to keep activations near
    unit size, norm weights around 1, biases and norm shifts around 0."""
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() >= 2:
                fan_in = p.shape[-1]
                scale = 0.5 if "embed" in name else 1.0 / fan_in**0.5
                p.copy_(noise * scale)
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


# Qwen3-Reranker-0.6B's shape, and a small one (head_dim given, not
# hidden / heads, and grouped-query attention, as in every Qwen3).
QWEN3_06B = dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6, pad_token_id=0)
QWEN3_SMALL = dict(vocab_size=704, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rope_theta=10000.0, rms_norm_eps=1e-6, pad_token_id=0)


# name → (transformers config class, config keywords, tokenizer kind, vocab,
#         max_length, whether token type ids are model inputs, weight format:
#         "safetensors", "pytorch", or "causal-lm" for a decoder saved as a
#         causal language model)
def fixtures(real: bool):
    small = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128)
    labels2 = dict(num_labels=2, id2label={0: "irrelevant", 1: "relevant"}, label2id={"irrelevant": 0, "relevant": 1})
    if real:
        base = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        return {
            "xlm-roberta-base": ("XLMRobertaConfig", dict(base, vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5, num_labels=1), "unigram-xlmr", 2000, 512, False, "safetensors"),
            "modernbert-base": ("ModernBertConfig", dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152, vocab_size=50368, num_labels=1, pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3), "bytelevel-modernbert", 2000, 512, False, "safetensors"),
            "electra-base": ("ElectraConfig", dict(base, vocab_size=30522, embedding_size=768, num_labels=1), "wordpiece", 2000, 512, True, "safetensors"),
            "qwen3-reranker-0.6b": ("Qwen3Config", dict(QWEN3_06B, tie_word_embeddings=True), "bytelevel-qwen-words", 30000, 512, False, "causal-lm"),
            "distilbert-base": ("DistilBertConfig", dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072, vocab_size=30522, num_labels=1), "wordpiece", 2000, 512, False, "safetensors"),
        }
    return {
        "roberta": ("RobertaConfig", dict(small, vocab_size=600, max_position_embeddings=42, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5, num_labels=1), "bytelevel-roberta", 600, 40, False, "safetensors"),
        "xlm-roberta": ("XLMRobertaConfig", dict(small, vocab_size=500, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5, **labels2), "unigram-xlmr", 500, 64, False, "safetensors"),
        "electra": ("ElectraConfig", dict(small, vocab_size=500, embedding_size=32, max_position_embeddings=64, num_labels=1, hidden_act="gelu"), "wordpiece", 500, 64, True, "safetensors"),
        "distilbert": ("DistilBertConfig", dict(dim=64, n_layers=3, n_heads=2, hidden_dim=128, vocab_size=500, max_position_embeddings=64, num_labels=1), "wordpiece", 500, 64, False, "pytorch"),
        "modernbert": ("ModernBertConfig", dict(small, num_hidden_layers=4, vocab_size=600, max_position_embeddings=256, local_attention=8, num_labels=1, classifier_pooling="cls", pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3), "bytelevel-modernbert", 600, 96, False, "safetensors"),
        "qwen3-reranker": ("Qwen3Config", dict(QWEN3_SMALL, tie_word_embeddings=True), "bytelevel-qwen", 700, 224, False, "causal-lm"),
        "qwen3-seq-cls": ("Qwen3Config", dict(QWEN3_SMALL, tie_word_embeddings=False, num_labels=1, attention_bias=True), "bytelevel-qwen", 700, 224, False, "safetensors"),
        "modernbert-mean": ("ModernBertConfig", dict(small, num_hidden_layers=4, vocab_size=600, max_position_embeddings=256, local_attention=16, num_labels=1, classifier_pooling="mean", attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True, classifier_activation="gelu_pytorch_tanh", pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3, global_attn_every_n_layers=2), "bytelevel-modernbert", 600, 96, False, "safetensors"),
    }


def older_modernbert_keys(config_path: Path) -> None:
    """Rewrites a ModernBERT config in the keys older checkpoints on the hub
    use (global_attn_every_n_layers, global/local_rope_theta), so both
    spellings are tested."""
    c = json.loads(config_path.read_text())
    types = c.pop("layer_types")
    rope = c.pop("rope_parameters")
    every = next(i for i, t in enumerate(types[1:], 1) if t == "full_attention")
    c["global_attn_every_n_layers"] = every
    c["global_rope_theta"] = rope["full_attention"]["rope_theta"]
    c["local_rope_theta"] = rope["sliding_attention"]["rope_theta"]
    config_path.write_text(json.dumps(c, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-sizes", metavar="DIR", help="write real-size random models here instead")
    ap.add_argument("--only", help="comma-separated fixture names")
    args = ap.parse_args()
    ensure_venv()
    import tokenizers
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerFast

    torch.manual_seed(0)
    out_root = Path(args.real_sizes) if args.real_sizes else OUT
    chosen = fixtures(bool(args.real_sizes))
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    for name, (config_class, keywords, tok_kind, vocab, max_length, type_ids, weights) in chosen.items():
        directory = out_root / name
        directory.mkdir(parents=True, exist_ok=True)
        tok, specials = train_tokenizer(tok_kind, vocab)
        inputs = ["input_ids", "token_type_ids", "attention_mask"] if type_ids else ["input_ids", "attention_mask"]
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_length, model_input_names=inputs, **specials)
        config = getattr(transformers, config_class)(**keywords)
        causal = weights == "causal-lm"
        auto = AutoModelForCausalLM if causal else AutoModelForSequenceClassification
        config.architectures = [config_class.replace("Config", "ForCausalLM" if causal else "ForSequenceClassification")]
        model = auto.from_config(config, attn_implementation="eager")
        randomize(model, torch)
        model.eval()
        model.save_pretrained(str(directory))
        tokenizer.save_pretrained(str(directory))
        if weights == "pytorch":
            # A pickle, as older checkpoints ship (transformers now saves safetensors only).
            from safetensors.torch import load_file

            state = load_file(str(directory / "model.safetensors"))
            torch.save(state, str(directory / "pytorch_model.bin"))
            (directory / "model.safetensors").unlink()
        if name == "modernbert-mean":
            older_modernbert_keys(directory / "config.json")
        if args.real_sizes:
            print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters -> {directory}")
            continue
        # Reload from the files, as a user would, then score one pair per forward.
        if weights in ("safetensors", "causal-lm"):
            model = auto.from_pretrained(str(directory), dtype=torch.float32, attn_implementation="eager")
            model.eval()
        recorded = []
        if config_class == "Qwen3Config":
            for i, pair in enumerate(qwen_pairs()):
                ids, logits = qwen_reference(tokenizer, model, pair, max_length, causal)
                recorded.append({"id": i, **pair, "input_ids": ids, "logits": logits})
        with torch.no_grad():
            for i, pair in enumerate(pairs() if config_class != "Qwen3Config" else []):
                enc = tokenizer([pair["query"]], [pair["passage"]], truncation=True, max_length=max_length, return_tensors="pt")
                logits = model(**enc).logits[0].tolist()
                recorded.append({"id": i, **pair, "input_ids": enc["input_ids"][0].tolist(), "logits": logits})
        fixture = {
            "model": name,
            "model_type": config.model_type,
            "reference": (
                f"transformers {auto.__name__} (eager attention), float32, Qwen3-Reranker's model card: prefix + tokenizer([formatted pair], truncation='longest_first', max_length={max_length} - prefix - suffix) + suffix, the last position's logits" + (" of \"no\" and \"yes\"" if causal else "") + ", one pair per forward"
                if config_class == "Qwen3Config"
                else f"transformers AutoModelForSequenceClassification (eager attention), float32, tokenizer([query], [passage], truncation=True, max_length={max_length}), one pair per forward"
            ),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
            "max_length": max_length,
            "pairs": recorded,
        }
        (directory / "expected.json").write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
        for extra in ["special_tokens_map.json", "tokenizer_config.json"]:
            (directory / extra).unlink(missing_ok=True)
        lengths = [len(p["input_ids"]) for p in recorded]
        truncated = sum(1 for n in lengths if n == max_length)
        print(f"{name}: {len(recorded)} pairs, {min(lengths)}..{max(lengths)} tokens ({truncated} at max_length {max_length}) -> {directory.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
