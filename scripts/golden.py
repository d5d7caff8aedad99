#!/usr/bin/env python3
"""Writes tests/fixtures/golden_minilm_l6_ce.json: token ids and raw logits of
the default model computed by Hugging Face transformers (the reference the
Rust engine is tested against).

    python3 scripts/golden.py            # makes .venv-golden, installs torch + transformers, runs

Every pair is deterministic text committed here; the fixture records the
library versions that produced it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-golden"
MODEL = ROOT / "models" / "minilm-l6-ce"
OUT = ROOT / "tests" / "fixtures" / "golden_minilm_l6_ce.json"
MAX_LENGTH = 512


def ensure_venv() -> None:
    """Re-executes inside a venv that has torch and transformers."""
    if os.environ.get("CE_GOLDEN_IN_VENV") == "1":
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    probe = subprocess.run([str(python), "-c", "import torch, transformers"], capture_output=True)
    if probe.returncode != 0:
        subprocess.check_call([str(python), "-m", "pip", "install", "--quiet", "torch", "transformers"])
    subprocess.check_call([str(ROOT / "scripts" / "fetch_model.sh")])
    env = dict(os.environ, CE_GOLDEN_IN_VENV="1")
    os.execve(str(python), [str(python), __file__, *sys.argv[1:]], env)


QUERIES = [
    "how do vaccines train the immune system",
    "what causes the seasons on earth",
    "best way to store fresh bread",
    "why is the sky blue",
    "how does a bill become law in the united states",
    "what is the difference between weather and climate",
    "how do bees make honey",
    "when was the printing press invented",
    "how to reduce memory usage in a python program",
    "what does a cross encoder do in search ranking",
    "symptoms of iron deficiency",
    "how do tides work",
]

PASSAGES = [
    "Vaccines expose the immune system to a harmless piece or weakened form of a pathogen. "
    "B cells learn to produce antibodies against it, and memory cells remain for years, so a later "
    "infection is recognised and cleared quickly.",
    "The seasons are caused by the tilt of Earth's rotational axis, about 23.4 degrees relative to its "
    "orbital plane. When a hemisphere is tilted toward the Sun, sunlight strikes it more directly and days are longer.",
    "Bread keeps best at room temperature in a paper bag or a bread box for a day or two. For longer storage, "
    "slice it and freeze it in an airtight bag; the refrigerator makes bread go stale faster.",
    "Sunlight is scattered by the molecules of the atmosphere, and shorter wavelengths scatter much more "
    "strongly than longer ones. This Rayleigh scattering sends blue light across the whole sky.",
    "A bill may be introduced in either chamber of Congress. After committee review and a floor vote in both "
    "the House and the Senate, it goes to the President, who can sign it into law or veto it.",
    "Weather describes the state of the atmosphere over hours or days: temperature, rain, wind. Climate is the "
    "average pattern of weather in a region over decades.",
    "Honey bees collect nectar from flowers and store it in their honey stomachs. Back in the hive, enzymes break "
    "down the sugars, and the bees fan the cells with their wings until most of the water evaporates.",
    "Johannes Gutenberg developed a movable-type printing press in Mainz around 1440. His Bible, printed in the "
    "1450s, showed that books could be produced far faster than by hand copying.",
    "To cut the memory footprint of a Python program, stream data with generators instead of building large "
    "lists, use __slots__ on classes with many instances, and prefer arrays from numpy for numeric data.",
    "A cross-encoder reads the query and a candidate document together in one transformer pass and outputs a "
    "relevance score. It is slower than a bi-encoder but usually more accurate, so it reranks a short list.",
    "Iron deficiency can cause tiredness, pale skin, shortness of breath, headaches, cold hands and feet, and "
    "brittle nails. A blood test measuring ferritin confirms it.",
    "Tides are the rise and fall of sea levels caused mainly by the Moon's gravity. The Sun contributes too: "
    "when Sun and Moon align, spring tides are higher than usual.",
    "The Great Wall of China is a series of fortifications built over many centuries to protect Chinese states "
    "from raids. Most of what stands today dates from the Ming dynasty.",
    "Photosynthesis converts light energy into chemical energy. Plants take in carbon dioxide and water and, "
    "using sunlight, produce glucose and release oxygen.",
    "A good night's sleep helps memory consolidation. Adults generally need seven to nine hours, and a regular "
    "schedule matters as much as the total.",
    "The stock market lets companies raise capital by selling shares. Prices move with expectations about future "
    "profits, interest rates and the general economy.",
    "Mount Everest, on the border of Nepal and China, is the highest mountain above sea level at 8,849 metres. "
    "Climbers usually attempt the summit in May.",
    "Coffee contains caffeine, a stimulant that blocks adenosine receptors in the brain and makes people feel "
    "more alert for a few hours.",
    "Rust is a systems programming language focused on safety and performance. Its ownership model prevents data "
    "races and use-after-free bugs at compile time.",
    "The French Revolution began in 1789 and ended the absolute monarchy in France. It spread ideas of liberty, "
    "equality and the rights of citizens across Europe.",
    "Volcanoes form where molten rock reaches the surface, often at the boundaries of tectonic plates. Eruptions "
    "can be explosive or can pour out slow rivers of lava.",
    "To make a simple tomato sauce, soften garlic in olive oil, add crushed tomatoes and a pinch of salt, and "
    "simmer for twenty minutes until it thickens.",
    "Electric cars use a battery and an electric motor instead of a petrol engine. They are quieter, have fewer "
    "moving parts and produce no tailpipe emissions.",
    "The human heart has four chambers. The right side pumps blood to the lungs, and the left side pumps "
    "oxygen-rich blood to the rest of the body.",
]


def real_pairs():
    """Each query against its own passage and seven others, chosen by a fixed rule."""
    pairs = []
    n = len(PASSAGES)
    for qi, query in enumerate(QUERIES):
        chosen = [qi] + [(qi * 5 + 3 * k + 1) % n for k in range(1, 8)]
        seen = []
        for pi in chosen:
            if pi not in seen:
                seen.append(pi)
        for pi in seen:
            pairs.append({"kind": "text", "query": query, "passage": PASSAGES[pi]})
    return pairs


def edge_pairs():
    long_passage = " ".join(PASSAGES * 2)  # far over 512 tokens
    long_query = " ".join(PASSAGES[:10])  # with a long passage, both sides truncate
    word_120 = ("pneumonoultramicroscopicsilicovolcanoconiosis" * 3)[:120]
    cases = [
        ("one-word passage", "what is honey", "Honey"),
        ("long passage truncated", QUERIES[0], long_passage),
        ("both sides truncated", long_query, " ".join(reversed(PASSAGES))),
        ("accents", "crème brûlée recipe", "Café au lait, crème brûlée et façade naïve: un résumé élégant à Zürich."),
        ("cjk", "capital of japan", "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다."),
        ("emoji", "pizza night ideas 🍕", "We love pizza 🍕🔥 with friends 👩‍👩‍👧‍👦 and coffee ☕️ after 👍🏽"),
        ("cyrillic and arabic", "столица России", "Москва — столица России. القاهرة هي عاصمة مصر وأكبر مدنها."),
        ("combining marks", "e\u0301cole", "L'e\u0301cole de la n\u0303andu\u0301 z\u0335a\u0336l\u0337g\u0338o text."),
        ("whitespace runs", "tabs\tand   spaces", "word   \t\t another\r\nline\n\n\nend\r\r  of   text\t"),
        ("120-character word", "long words", f"The word {word_120} is not in any vocabulary."),
        ("zero-width and nbsp", "zero\u200bwidth", "zero\u200bwidth\u200cjoin\u200dner\ufeff and non\u00a0breaking\u202fspace"),
        ("empty passage", "anything at all", ""),
        ("punctuation only", "??", "!!! ... ---"),
        ("numbers", "population of tokyo 2023", "Tokyo had 14,094,034 residents on 1 October 2023 (+0.3%)."),
    ]
    return [{"kind": kind, "query": q, "passage": p} for kind, q, p in cases]


def main() -> int:
    ensure_venv()
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL))
    model = AutoModelForSequenceClassification.from_pretrained(str(MODEL), dtype=torch.float32)
    model.eval()

    pairs = real_pairs() + edge_pairs()
    out = []
    with torch.no_grad():
        for i, pair in enumerate(pairs):
            # Lists, as sentence-transformers' CrossEncoder calls it: a lone ""
            # text_pair would be dropped as "no pair", a listed one is kept.
            enc = tokenizer([pair["query"]], [pair["passage"]], truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
            logits = model(**enc).logits[0].tolist()
            out.append({
                "id": i,
                **pair,
                "input_ids": enc["input_ids"][0].tolist(),
                "token_type_ids": enc["token_type_ids"][0].tolist(),
                "logits": logits,
            })
    fixture = {
        "model": "models/minilm-l6-ce (scripts/fetch_model.sh)",
        "reference": "transformers AutoModelForSequenceClassification, float32, tokenizer([query], [passage], truncation=True, max_length=512), one pair per forward",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "max_length": MAX_LENGTH,
        "pairs": out,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n")
    lengths = [len(p["input_ids"]) for p in out]
    print(f"golden: {len(out)} pairs, {min(lengths)}..{max(lengths)} tokens -> {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
