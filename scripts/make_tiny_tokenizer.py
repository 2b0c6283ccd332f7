"""Build the small CLIP-style BPE tokenizer that the offline tiny bases use.

Real Stable Diffusion tokenizers cannot be downloaded here, and the tiny bases only need a
tokenizer of the same kind (byte-level BPE with CLIP's `</w>` word ends), not the same
vocabulary. We learn merges from the words portrait prompts use (the list below plus every word
of the built-in styles), so prompts tokenise into whole words rather than letters and a style's
prompt fits CLIP's 77 tokens on the tiny bases as it does on the real ones. Output:
portraitkit/assets/tiny_tokenizer/.

Run: python scripts/make_tiny_tokenizer.py
"""

import collections
import json
import re
from pathlib import Path

import yaml

ASSETS = Path(__file__).resolve().parents[1] / "portraitkit" / "assets"
OUT = ASSETS / "tiny_tokenizer"
NUM_MERGES = 1200  # enough for every corpus word to become one token
CORPUS = """
a photo of sks person man woman portrait headshot close up upper body studio outdoor corporate natural
soft key light from the side clean fill light no harsh shadows neutral grey background bokeh park
golden hour sunlight window light office business suit shirt smiling genuine smile relaxed expression
realistic true to life proportions skin texture sharp focus detailed eyes 85mm lens photograph
professional high quality best quality low quality worst quality blurry deformed distorted ugly
cartoon painting drawing illustration render cgi plastic oversaturated overexposed underexposed
wide angle fisheye big nose extra fingers watermark text logo frame cropped out of frame bad anatomy
dating profile casual warm cool tones film grain cinematic evening city street cafe beach forest
looking at the camera three quarter view face centred shoulders head and shoulders light dark
"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def style_words() -> list[str]:
    """Every word in the built-in styles, as CLIP's pre-tokenizer splits them (letters only)."""
    def strings(node):
        if isinstance(node, dict):
            return [text for value in node.values() for text in strings(value)]
        return [node] if isinstance(node, str) else []

    styles = yaml.safe_load((ASSETS / "styles.yaml").read_text(encoding="utf-8"))
    return [word for text in strings(styles) for word in re.findall(r"[a-z]+", text.lower())]


def learn_merges(words: list[str], count: int) -> list[tuple[str, str]]:
    vocab = collections.Counter(tuple(word[:-1]) + (word[-1] + "</w>",) for word in words)
    merges = []
    for _ in range(count):
        pairs = collections.Counter()
        for symbols, freq in vocab.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged = collections.Counter()
        for symbols, freq in vocab.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += freq
        vocab = merged
    return merges


def main() -> None:
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges = learn_merges(CORPUS.split() + style_words(), NUM_MERGES)
    tokens += ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (OUT / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {OUT}")


if __name__ == "__main__":
    main()
