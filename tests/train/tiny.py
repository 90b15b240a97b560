"""Tiny seeded models saved as folders with a character-level tokenizer, so the CLI can load them."""

from __future__ import annotations

import string
from pathlib import Path

from conftest import BUILDERS, VOCAB
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0-3, as the tiny configs expect (pad 0, bos 1, eos 2)
CHARACTERS = string.ascii_lowercase + string.digits + " .,'\"!?-:;()#\n"


def char_tokenizer(family: str) -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(SPECIALS + list(CHARACTERS))}
    assert len(vocab) <= VOCAB
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    template = {"bert": ("<s> $A </s>", "<s> $A </s> $B </s>"), "t5": ("$A </s>", "$A </s> $B </s>"),
                "llama": ("<s> $A", "<s> $A $B")}.get(family)
    if template:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=template[0], pair=template[1], special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def save_tiny(family: str, folder: Path, dropout: bool = True) -> Path:
    """A tiny ``family`` model (bert, t5, llama, gpt2) with its tokenizer in ``folder``."""
    model = BUILDERS[family]()
    if not dropout:  # processes draw different dropout masks: runs compared across launches go without
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout_rate", "resid_pdrop",
                     "embd_pdrop", "attn_pdrop", "attention_dropout"):
            if hasattr(model.config, name):
                setattr(model.config, name, 0.0)
    if family == "t5":
        model.config.eos_token_id = 2
    model.save_pretrained(folder)
    char_tokenizer(family).save_pretrained(folder)
    return folder
