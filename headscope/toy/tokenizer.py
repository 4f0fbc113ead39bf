"""A word-level fast tokenizer over the shared toy vocabulary.

Text is split on whitespace and each word is looked up in :data:`~headscope.toy.vocab.VOCAB`
(unknown words become ``<unk>``). A ``TemplateProcessing`` post-processor prepends ``<bos>``,
so ``tok("A B C")["input_ids"] == [bos, A, B, C]``; that is what the TransformerLens bridge
expects of a BOS-prepending tokenizer (``bridge.to_tokens("A B C")`` gives the same ids,
shape (1, 4)). Decoding joins tokens with single spaces.

The tokenizer is built with ``name_or_path`` set to the toy model's name and
``add_bos_token=True``; without these the bridge's tokenizer setup raises
``KeyError('name_or_path')`` or tries to re-download the tokenizer from the hub.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from headscope.toy.vocab import BOS, EOS, PAD, UNK, VOCAB

__all__ = ["build_tokenizer"]


def build_tokenizer(name: str, vocab: dict[str, int] | None = None) -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer of toy model ``name``.

    Args:
        name: the toy model's name, recorded as the tokenizer's ``name_or_path``.
        vocab: token -> id; defaults to the shared :data:`~headscope.toy.vocab.VOCAB`. It must
            contain ``<bos>``, ``<eos>``, ``<pad>`` and ``<unk>``.

    Returns:
        A ``PreTrainedTokenizerFast`` that prepends ``<bos>`` to every sequence.
    """
    vocab = dict(VOCAB if vocab is None else vocab)
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, vocab[BOS])],
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        name_or_path=name,
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=10**6,
    )
