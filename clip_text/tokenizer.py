"""CLIP's byte-level BPE tokenizer, the one OpenAI CLIP was trained with. The merge list,
bpe_simple_vocab_16e6.txt.gz, ships beside this file (see NOTICE)."""

import functools
import gzip
import html
import itertools
import os

import ftfy
import regex
import torch

VOCAB_FILE = os.path.join(os.path.dirname(__file__), "bpe_simple_vocab_16e6.txt.gz")
NUM_MERGES = 49152 - 256 - 2  # vocabulary: 512 byte symbols + 48894 merges + 2 specials = 49408
START_OF_TEXT = "<start_of_text>"  # id 49406 (OpenAI's own tokenizer spells it "<|startoftext|>")
END_OF_TEXT = "<end_of_text>"  # id 49407, the largest id: the encoder pools at argmax(ids)
PIECE = regex.compile(  # contractions, letters, single digits, other; a special is one piece
    r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)


class SimpleTokenizer:
    """Byte-level BPE over CLIP's merge list; ids equal to open_clip.tokenizer.SimpleTokenizer's."""

    def __init__(self, vocab_file=VOCAB_FILE):
        with gzip.open(vocab_file, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1 : NUM_MERGES + 1]  # line 0 is a header
        merges = [tuple(line.split()) for line in lines]
        # byte -> its stand-in, in vocabulary order: printable Latin-1 bytes stand for themselves,
        # then the 68 others (controls, space, soft hyphen, ...) for chr(256), chr(257), ...
        printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
        printable += range(ord("®"), ord("ÿ") + 1)
        others = [b for b in range(256) if b not in printable]
        self.byte_to_symbol = {b: chr(b) for b in printable}
        self.byte_to_symbol |= {b: chr(256 + k) for k, b in enumerate(others)}
        symbols = list(self.byte_to_symbol.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += [START_OF_TEXT, END_OF_TEXT]
        self.token_to_id = {token: i for i, token in enumerate(vocab)}
        self.vocab_size = len(vocab)  # 49408
        self.sot_id, self.eot_id = self.vocab_size - 2, self.vocab_size - 1  # 49406, 49407
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.bpe = functools.cache(self.bpe)  # each piece merged once

    def bpe(self, piece):
        """Byte-pair merge one piece (spelled in stand-in characters) -> tuple of symbols."""
        symbols = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(itertools.pairwise(symbols))
            best = min(pairs, key=lambda pair: self.merge_rank.get(pair, NUM_MERGES))
            if best not in self.merge_rank:  # no adjacent pair is in the merge list
                break
            merged = []  # every non-overlapping occurrence of best, left to right
            for symbol in symbols:
                if merged and (merged[-1], symbol) == best:
                    merged[-1] += symbol  # a merged symbol never equals best[0]: no overlaps
                else:
                    merged.append(symbol)
            symbols = merged
        return tuple(symbols)

    def encode(self, text):
        """str -> list[int] of BPE ids (no start/end tokens)."""
        ids, text = [], html.unescape(html.unescape(ftfy.fix_text(text)))  # repaired, unescaped
        for piece in PIECE.findall(" ".join(text.split()).lower()):  # whitespace collapsed
            if piece in (START_OF_TEXT, END_OF_TEXT):  # written literally in the text
                ids.append(self.token_to_id[piece])
            else:
                spelled = "".join(self.byte_to_symbol[b] for b in piece.encode("utf-8"))
                ids.extend(self.token_to_id[s] for s in self.bpe(spelled))
        return ids


@functools.lru_cache(maxsize=1)
def default_tokenizer():
    """The tokenizer over the shipped merge list (built once, ~0.3 s)."""
    return SimpleTokenizer()


def tokenize(texts, context_length=77, truncate=False):
    """A str or list of str -> LongTensor (N, context_length) of [SOT, ids..., EOT, 0, ...], as
    clip.tokenize; a text that does not fit is a ValueError, or with truncate=True cut to fit."""
    texts = [texts] if isinstance(texts, str) else texts
    tokenizer = default_tokenizer()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)  # (N, L)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"tokenize: texts[{row}] is {type(text).__name__}, not str")
        ids = [tokenizer.sot_id, *tokenizer.encode(text), tokenizer.eot_id]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"{text!r} is {len(ids)} tokens, over the {context_length}-token context"
                )
            ids = ids[: context_length - 1] + [tokenizer.eot_id]
        result[row, : len(ids)] = torch.tensor(ids)
    return result
