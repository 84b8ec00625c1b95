"""A small encoder built from scratch: a byte-level BPE tokenizer trained on given texts with `tokenizers`,
and a randomly initialised BERT-style `transformers` model, saved as a standard model directory.

Used where no pretrained model is on disk (tests, demos, CPU runs, benchmarks of the mining stage):
nothing is downloaded. `transformers` and `sentence-transformers` load the folder as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def build_small_model(
    texts: Iterable[str],
    out_dir: str | Path,
    *,
    vocab_size: int = 8000,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 2,
    max_length: int = 256,
    seed: int = 0,
    pass_through: bool = False,
) -> Path:
    """Train a tokenizer on `texts`, build a BERT encoder of the given size, save both to `out_dir`.

    `pass_through`: zero the position embeddings and every layer's residual branches, so the
    untrained model embeds a text as the mean of its (normalised) token vectors: a lexical
    retriever that ranks like a weak real model (random weights give every text nearly the same
    embedding). It costs the same compute as the random model (every layer still runs), so it
    stands in for a real model of that size in tests and benchmarks; and it is the trainer's
    default start, each layer growing from the identity (zero-initialised residual branches, as
    in SkipInit and ReZero)."""
    import torch
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # Byte-level BPE (as GPT-2 and RoBERTa): every script is covered by its bytes, so no text is ever
    # [UNK]. A WordPiece vocabulary must first hold every character it sees: on hundreds of languages
    # (thousands of Han characters) that alphabet filled the whole vocabulary, leaving no room for a
    # single merge, so the model saw characters only ("what" -> w ##h ##a ##t); a capped alphabet
    # instead turned half of the Korean text into [UNK]. Words are split on spaces first and each one
    # gets its own leading space, so a prompt's tokens are the same alone as before a query (pooling
    # without the instruction counts them).
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.ByteLevel(add_prefix_space=True)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=special,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )
    from tokenizers.processors import TemplateProcessing

    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    fast.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_length,
    )
    out = Path(out_dir)
    model = BertModel(config)
    if pass_through:
        with torch.no_grad():
            model.embeddings.position_embeddings.weight.zero_()
            model.embeddings.token_type_embeddings.weight.zero_()
            for layer in model.encoder.layer:
                for dense in (layer.attention.output.dense, layer.output.dense):
                    dense.weight.zero_()
                    dense.bias.zero_()
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out
