#!/usr/bin/env python3
"""tests/ref/tokenizer_ref.py -- independent reference for tests/unit/model/test_tokenizer.c.

Re-implements, in Python and with Python's own Unicode machinery (unicodedata, str.lower,
str.split, float() and the `regex` module with CLIP's pre-split pattern), what ComfyUI's
SDTokenizer.tokenize_with_weights returns with transformers' slow CLIPTokenizer (no ftfy), and
writes the expected ids and weights for the prompts below to tests/data/tokenizer/expected.json.
It shares no code with kiln's C tokenizer. Run once after changing the prompts or the tiny
vocabulary (tests/data/tokenizer/tiny/, written by tokenizer_write_tiny):

    python3 tests/ref/tokenizer_ref.py        # needs `pip install regex`
"""
import json
import os
import unicodedata

import regex

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "tokenizer")
START, END = "<|startoftext|>", "<|endoftext|>"


# ----- CLIP BPE (transformers CLIPTokenizer semantics, no ftfy) -----

def byte_chars():
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class Clip:
    def __init__(self, folder):
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            self.vocab = json.load(f)
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            lines = f.read().strip().split("\n")[1:48894 + 1]
        self.rank = {}
        for i, line in enumerate(lines):
            self.rank[tuple(line.split())] = i
        self.bytes = byte_chars()
        self.pat = regex.compile(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+",
            regex.IGNORECASE)

    def bpe(self, piece):
        if piece in (START, END):
            return [piece]
        syms = list(piece)
        syms[-1] += "</w>"
        while len(syms) > 1:
            ranked = [(self.rank.get((syms[i], syms[i + 1])), i) for i in range(len(syms) - 1)]
            ranked = [r for r in ranked if r[0] is not None]
            if not ranked:
                break
            a, b = syms[min(ranked)[1]], syms[min(ranked)[1] + 1]
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            syms = out
        return syms

    @staticmethod
    def basic(text):
        """BasicTokenizer(strip_accents=False, do_split_on_punc=False).tokenize, joined."""
        kept = []
        for ch in text:
            cat = unicodedata.category(ch)
            if ch in "\t\n\r" or ch == " " or cat == "Zs":
                kept.append(" ")
            elif ord(ch) in (0, 0xFFFD) or cat[0] == "C":
                continue
            else:
                kept.append(ch)
        spaced = []
        for ch in kept:
            c = ord(ch)
            cjk = (0x4E00 <= c <= 0x9FFF or 0x3400 <= c <= 0x4DBF or 0x20000 <= c <= 0x2A6DF
                   or 0x2A700 <= c <= 0x2B73F or 0x2B740 <= c <= 0x2B81F or 0x2B820 <= c <= 0x2CEAF
                   or 0xF900 <= c <= 0xFAFF or 0x2F800 <= c <= 0x2FA1F)
            spaced.append(" " + ch + " " if cjk else ch)
        text = unicodedata.normalize("NFC", "".join(spaced))
        return " ".join(word.lower() for word in text.split())

    def plain(self, text):
        """tokenizer(text, add_special_tokens=False)["input_ids"]."""
        ids = []
        for part in regex.split("(<\\|startoftext\\|>|<\\|endoftext\\|>)", text):
            if part in (START, END):
                ids.append(self.vocab[part])
                continue
            if not part:
                continue
            for piece in self.pat.findall(self.basic(part)):
                mapped = "".join(self.bytes[b] for b in piece.encode("utf-8"))
                ids += [self.vocab.get(s, self.vocab[END]) for s in self.bpe(mapped)]
        return ids


# ----- ComfyUI prompt syntax (as described in ENGINE.md section 5 and sd1_clip.py docs) -----

def top_level_items(s):
    items, cur, depth = [], "", 0
    for ch in s:
        if ch == "(":
            if depth == 0:
                if cur:
                    items.append(cur)
                cur = "("
            else:
                cur += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            cur += ch
            if depth == 0:
                items.append(cur)
                cur = ""
        else:
            cur += ch
    if cur:
        items.append(cur)
    return items


def weigh(s, w):
    out = []
    for item in top_level_items(s):
        if len(item) >= 2 and item[0] == "(" and item[-1] == ")":
            inner, new_w = item[1:-1], w * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    new_w = float(inner[colon + 1:])
                    inner = inner[:colon]
                except ValueError:
                    pass
            out += weigh(inner, new_w)
        else:
            out.append((item, w))
    return out


def groups_of(clip, text):
    text = text.replace("\\)", "\0\1").replace("\\(", "\0\2")
    groups = []
    for seg, w in weigh(text, 1.0):
        seg = seg.replace("\0\1", ")").replace("\0\2", "(")
        parts = regex.split(" embedding:|\nembedding:", seg)
        pieces = [parts[0]] + ["embedding:" + p for p in parts[1:]]
        for piece in pieces:
            if not piece:
                continue
            if piece.startswith("embedding:"):
                words = piece[len("embedding:"):].strip("\n").split()
                name, rest = words[0], " ".join(words[1:])
                bare = name.strip(",")
                if len(bare) < len(name):
                    rest = name[len(bare):] + " " + rest
                if not rest:
                    continue
                piece = rest
            groups.append([(t, w) for t in clip.plain(piece)])
    return groups


def chunks(clip, text):
    start, end = clip.vocab[START], clip.vocab[END]
    rows, row = [], [(start, 1.0)]
    for g in groups_of(clip, text):
        big = len(g) >= 8
        while g:
            if len(row) + len(g) <= 76:
                row += g
                g = []
                continue
            room = 76 - len(row)
            if big:
                row += g[:room]
                g = g[room:]
                row.append((end, 1.0))
            else:
                row.append((end, 1.0))
                row += [(end, 1.0)] * room
            rows.append(row)
            row = [(start, 1.0)]
    row.append((end, 1.0))
    row += [(end, 1.0)] * (77 - len(row))
    rows.append(row)
    return rows


PLAIN = [
    "a photo of a cat",
    "A Photo OF a CAT",
    "a beautiful landscape, highly detailed, 4k, 8k uhd",
    "it's a cat's toy; they're we've I'm we'll he'd 'S 'ſ",
    "zebra xylophone quokka",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9",
    "cafe\u0301 re\u0301sume\u0301",
    "\u039f\u0394\u039f\u03a3 \u03a3\u039f\u03a6\u039f\u03a3. \u03a3",
    "\u0130stanbul \u01c4 \u01c5 \u01c6",
    "\u732b\u304c\u3044\u308b \u6771\u4eac\u30bf\u30ef\u30fc \uf900",
    "emoji \U0001f431\U0001f436 test",
    "tab\tnew\nline\r\n  spaces   ",
    "control\x01\x02chars\x7f here\u200b zero\u00a0nbsp\u3000ideo",
    "<|startoftext|>a cat<|endoftext|>",
    "A <|ENDOFTEXT|> b x!<|endoftext|>y",
    "numbers 12345 3.14 1,000",
    "punctuation!!! ... ??? (brackets) [square] {curly} \"quotes\" a--b",
    "x\u2028y\u2029z",
    "\u216b \u2460 \u00bd \u0663",
    "a" * 200,
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947",
    "\ufffd replacement",
    "a\u0378b\ue000c\U000e0041d",
    "",
    "   ",
    "masterpiece, best quality, a cat and a dog in the forest at night",
]

WEIGHTED = [
    "",
    "a photo of a cat",
    "(cat:1.3)",
    "((cat))",
    "\\(cat\\)",
    "(a:b)",
    "(a (b:1.5) c)",
    "((cat",
    "cat))",
    ")(",
    "a)(b)",
    "(cat:1.2:1.3)",
    "(:1.5)",
    "(cat: 1.5 )",
    "(cat:1_0)",
    "(cat:.5) (dog:2.) (bird:1e-1)",
    "[cat] {dog}",
    "foo ((((lol (cat:666) attack:100)))) baz",
    "foo ((((lol (cat:666) attack):100))) baz",
    "a cat embedding:foo, a dog",
    "embedding:bar",
    "cat embedding:,foo, dog\nembedding:x",
    "(masterpiece:1.2), best quality, (a cat:1.1) sitting on (a (wooden:0.8) table)",
    " ".join(["cat"] * 80),
    " ".join(["cat"] * 73) + " (a b c d e:1.2)",
    " ".join(["cat"] * 70) + " (a b c d e f g h:1.2)",
    " ".join(["cat"] * 75),
    " ".join(["cat"] * 76),
    ", ".join("(dog:1.%d)" % (i % 10) for i in range(60)),
    " ".join(["zebra"] * 40) + " " + " ".join("(cat:0.%d)" % (i % 10) for i in range(90)),
]


def main():
    clip = Clip(os.path.join(DATA, "tiny"))
    out = {"plain": [], "chunks": []}
    for t in PLAIN:
        out["plain"].append({"text": t, "ids": clip.plain(t)})
    for t in WEIGHTED:
        rows = chunks(clip, t)
        out["chunks"].append({"text": t, "ids": [[i for i, _ in r] for r in rows],
                              "weights": [[w for _, w in r] for r in rows]})
    with open(os.path.join(DATA, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
