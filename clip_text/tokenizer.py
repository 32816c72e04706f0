"""CLIP's byte-level BPE tokenizer (the one OpenAI CLIP was trained with).

Text -> ids in four steps:
  1. clean: ftfy repairs mojibake, HTML entities are unescaped (twice, as CLIP does),
     runs of whitespace become one space, everything is lower-cased;
  2. split into pieces: contractions ('s, 't, 're, 've, 'm, 'll, 'd), runs of letters,
     single digits, runs of other non-space characters;
  3. each piece's UTF-8 bytes are spelled with 256 printable stand-in characters, the last
     one marked end-of-word ("</w>"), and adjacent symbols are merged in the order the
     merge list ranks them (byte-pair encoding);
  4. every merged symbol is looked up in the 49408-entry vocabulary.
A sequence is [<start_of_text>, ids..., <end_of_text>] padded with zeros.

The merge list, bpe_simple_vocab_16e6.txt.gz, ships beside this file (see NOTICE).
"""

import functools
import gzip
import html
import itertools
import os

import ftfy
import regex
import torch

VOCAB_FILE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "bpe_simple_vocab_16e6.txt.gz"
)
# the vocabulary is 512 byte symbols + 48894 merges + 2 specials = 49408
NUM_MERGES = 49152 - 256 - 2
START_OF_TEXT = "<start_of_text>"  # id 49406 (OpenAI's own tokenizer spells it "<|startoftext|>")
END_OF_TEXT = "<end_of_text>"  # id 49407, the largest id: the encoder pools at argmax(ids)


def byte_symbols():
    """The 256 stand-in characters for bytes, as a dict byte -> character in vocabulary order.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves and come
    first; the other 68 bytes (controls, space, soft hyphen, ...) follow in byte order as
    chr(256), chr(257), ..., so no symbol is whitespace or a control character. The
    vocabulary's first 256 entries are these characters in exactly this order.
    """
    printable = [
        b
        for b in range(256)
        if "!" <= chr(b) <= "~" or "¡" <= chr(b) <= "¬" or "®" <= chr(b) <= "ÿ"
    ]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + k) for k, b in enumerate(others)})
    return table


def clean_text(text):
    """ftfy repair, HTML unescape (twice), whitespace collapsed to single spaces, lower case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


class SimpleTokenizer:
    """Byte-level BPE over CLIP's merge list; ids identical to open_clip.tokenizer.SimpleTokenizer.

    encode(text) -> list[int] without start/end tokens; decode(ids) -> str. A text that spells
    "<start_of_text>" or "<end_of_text>" literally gets the special id, as in open_clip.
    """

    def __init__(self, vocab_file=VOCAB_FILE):
        try:
            with gzip.open(vocab_file, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, EOFError) as e:
            raise ValueError(f"{vocab_file}: cannot read the BPE merge list ({e})") from e
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]  # line 0 is a header
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{vocab_file}: expected {NUM_MERGES} merge lines of two symbols each")

        self.byte_to_symbol = byte_symbols()
        self.symbol_to_byte = {s: b for b, s in self.byte_to_symbol.items()}
        symbols = list(self.byte_to_symbol.values())  # (256,) in vocabulary order
        vocab = symbols + [s + "</w>" for s in symbols]
        vocab += ["".join(m) for m in merges] + [START_OF_TEXT, END_OF_TEXT]
        self.token_to_id = {token: i for i, token in enumerate(vocab)}
        self.id_to_token = vocab
        self.merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self.sot_id = self.token_to_id[START_OF_TEXT]  # 49406
        self.eot_id = self.token_to_id[END_OF_TEXT]  # 49407
        self.vocab_size = len(vocab)  # 49408
        specials = f"{regex.escape(START_OF_TEXT)}|{regex.escape(END_OF_TEXT)}"
        self.piece_pattern = regex.compile(
            specials + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        # Memo of piece -> BPE symbols; bounded, and private to this tokenizer instance.
        self._bpe = functools.lru_cache(maxsize=1 << 16)(self._merge_piece)

    def _merge_piece(self, piece):
        """Byte-pair merge one piece (already spelled in stand-in characters) -> tuple of
        symbols."""
        symbols = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(symbols) > 1:
            ranked = [
                (self.merge_rank.get(pair, NUM_MERGES), pair)
                for pair in itertools.pairwise(symbols)
            ]
            rank, (left, right) = min(ranked, key=lambda r: r[0])
            if rank == NUM_MERGES:  # no adjacent pair is in the merge list
                break
            merged, i = [], 0
            while i < len(symbols):  # merge every non-overlapping (left, right), left to right
                if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                    merged.append(left + right)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(symbols)

    def encode(self, text):
        """str -> list[int] of BPE ids (no start/end tokens)."""
        ids = []
        for piece in self.piece_pattern.findall(clean_text(text)):
            if piece in (START_OF_TEXT, END_OF_TEXT):  # written literally in the text
                ids.append(self.token_to_id[piece])
                continue
            spelled = "".join(self.byte_to_symbol[b] for b in piece.encode("utf-8"))
            ids.extend(self.token_to_id[s] for s in self._bpe(spelled))
        return ids

    def decode(self, ids):
        """list[int] -> str (each end-of-word mark becomes a space)."""
        # specials are plain printable text
        symbols = "".join(self.id_to_token[int(i)] for i in ids)
        data = bytes(self.symbol_to_byte[c] for c in symbols)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")


@functools.lru_cache(maxsize=1)
def default_tokenizer():
    """The tokenizer over the shipped merge list (built once, ~0.3 s)."""
    return SimpleTokenizer()


def tokenize(texts, context_length=77, truncate=False):
    """Texts -> LongTensor [N, context_length] of [SOT, ids..., EOT, 0, ...] (OpenAI clip.tokenize).

    texts: a str or a list of str. A text that does not fit raises ValueError naming it,
    unless truncate=True, which cuts it and puts EOT in the last position.
    """
    if isinstance(texts, str):
        texts = [texts]
    tokenizer = default_tokenizer()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)  # (N, L)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"tokenize expects str texts, got {type(text).__name__} at position {row}"
            )
        ids = [tokenizer.sot_id] + tokenizer.encode(text) + [tokenizer.eot_id]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"Input text {text!r} is {len(ids)} tokens long, more than the context "
                    f"length {context_length}; shorten it or pass truncate=True"
                )
            ids = ids[:context_length]
            ids[-1] = tokenizer.eot_id
        result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result
