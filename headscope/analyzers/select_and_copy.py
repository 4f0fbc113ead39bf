"""Select-and-copy heads for multiple choice (Tulchinskii et al. 2024, "Listening to the Wise Few:
Select-and-Copy Attention Heads for Multiple-Choice QA").

For each question (task ``mcqa``) and head, at the prompt's last token ("Answer:"), with the
key of option ``j`` at its *key token* (``key``):

- QK-score of option ``j``: the dot product of the head's query at the last token with its key
  at option ``j``'s key token;
- attention score of option ``j``: the softmaxed attention weight there.

The head answers the option with the highest score. Heads are scored by accuracy on the
validation split (``qk_acc_val``, ``attn_acc_val``) and on the test split (``qk_acc_test``,
``attn_acc_test``). The best head is chosen on validation only (highest ``qk_acc_val``, ties
broken by ``attn_acc_val``, then by layer/head order); its *test* accuracy is reported next to
the model's own answer, the argmax of its next-token logits over the letters (`` A``, `` B``,
...; the leading-space form, else the bare letter), on the same test questions.

Choices and where they come from. We did not find the paper's own code; the follow-up paper
"Think First, Then Select and Verify with Query-Key Alignment" (anonymous repository
``yhn112/QK-resoning``, notebook ``HLE_MCQA_qwen3_14b.ipynb``, function ``do_calc_dev``)
computes the same QK-score and is the reference cited here:

- ``key="eol"`` (default, the paper's): the end-of-line token after each option's text (the
  notebook indexes the last token of each ``"X. text\\n"`` line; a reviewer of the ICLR 2025
  submission on OpenReview summarises the key as "the newline after the option text"). Under
  causal attention this is the first token of the line that has seen the whole option.
  ``key="letter"``: the option letter at the start of its line (headscope's earlier choice;
  that token has seen none of the option's text).
- ``qk="projected"`` (default, the paper's): ``q . k`` of the projected query and key *before*
  rotary embeddings (the notebook hooks ``q_proj``/``k_proj`` outputs and takes the raw dot
  product; summaries of the revised paper, arXiv 2410.02343, describe the QK-scores as computed
  without RoPE); on the bridge these are ``hook_q``/``hook_k`` (under GQA the key of the query
  head's KV group).
  ``qk="scores"``: the pre-softmax attention score ``q . k / sqrt(d_head)`` after RoPE
  (``hook_attn_scores``). Scaling does not change the argmax; RoPE can.
- Head selection: best validation accuracy, as the notebook's ``get_train_matrix`` (argmax
  over the layer x head accuracy matrix; headscope breaks ties by the attention accuracy).
- The model's letter baseline: headscope reads `` A`` (leading space) where the tokenizer has
  it; the notebook reads the bare letters' last token ids.

Preset ``paper``: ``key=eol``, ``qk=projected``. Provenance ``choices`` holds the key and QK
convention, the best heads and the three test accuracies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.errors import HeadscopeError
from headscope.lens.core import final_logits
from headscope.results import HeadScores, build_provenance
from headscope.tasks.mcqa import KEY_TOKENS, LETTERS, MCQAItem
from headscope.tasks.protocols import MultipleChoiceTask
from headscope.tasks.relations import single_token_id
from headscope.trace import trace
from headscope.trace.stream import capture_stream

QK_MODES: tuple[str, ...] = ("projected", "scores")
PAPER_PRESET: dict[str, Any] = {"key": "eol", "qk": "projected"}


def option_scores(model: Any, items: list[MCQAItem], batch_size: int = 8, key: str = "eol",
                  qk: str = "projected") -> tuple[np.ndarray, np.ndarray]:
    """Per item, layer, head and option: (QK scores, attention weights) at the last query.

    Args:
        key: ``eol`` (end-of-line token after each option) or ``letter`` (the option letter).
        qk: ``projected`` (pre-RoPE ``q . k``) or ``scores`` (``hook_attn_scores``).

    Returns:
        Two arrays of shape (n_items, n_layers, n_heads, n_options) (options padded with -inf).
    """
    if qk not in QK_MODES:
        raise HeadscopeError(f"qk must be one of {', '.join(QK_MODES)}; got '{qk}'.")
    n_opt = max(it.n_options for it in items)
    keys = [it.keys(key) for it in items]
    qk_out = np.full((len(items), model.n_layers, model.n_heads, n_opt), -np.inf)
    att = np.full_like(qk_out, -np.inf)
    acts = ["q", "k", "pattern"] if qk == "projected" else ["scores", "pattern"]
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        tokens, last = _pad(model, chunk)
        tr = trace(model, tokens, acts=acts)
        for layer in range(model.n_layers):
            pa = tr.get("pattern", layer).float().cpu()  # (b, head, q, k)
            if qk == "projected":
                q, k = tr.get("q", layer).float().cpu(), tr.get("k", layer).float().cpu()  # (b, pos, head, d_head)
            else:
                sc = tr.get("scores", layer).float().cpu()  # (b, head, q, k)
            for i, it in enumerate(chunk):
                m, end = torch.tensor(keys[start + i]), int(last[i])
                if qk == "projected":
                    vals = torch.einsum("hd,ohd->ho", q[i, end], k[i, m])  # (head, option)
                else:
                    vals = sc[i, :, end, m]
                qk_out[start + i, layer, :, : it.n_options] = vals.numpy()
                att[start + i, layer, :, : it.n_options] = pa[i, :, end, m].numpy()
    return qk_out, att


def _pad(model: Any, items: list[MCQAItem]) -> tuple[torch.Tensor, torch.Tensor]:
    from headscope.tasks.mcqa import MCQATask

    return MCQATask.item_batch(model, items)


def letter_answers(model: Any, items: list[MCQAItem]) -> np.ndarray:
    """The model's own answers: argmax of its next-token logits over the option letters."""
    tokens, last = _pad(model, items)
    normed = capture_stream(model, tokens, ["ln_final.hook_normalized"], positions=last)["ln_final.hook_normalized"]
    logits = final_logits(model, normed)
    n_opt = max(it.n_options for it in items)
    ids = [single_token_id(model.tokenizer, LETTERS[j]) for j in range(n_opt)]
    letter_logits = logits[:, torch.tensor(ids)]
    for i, it in enumerate(items):
        letter_logits[i, it.n_options :] = -float("inf")
    return letter_logits.argmax(-1).numpy()


@register_analyzer(
    "select_and_copy",
    summary="select-and-copy heads (Tulchinskii et al. 2024): answer MCQA by a head's QK/attention to each option's end-of-line token",
    requires=MultipleChoiceTask,
    presets={"paper": PAPER_PRESET},
)
def select_and_copy(model: Any, task: Any, key: str = "eol", qk: str = "projected", batch_size: int = 8,
                    progress: bool = False) -> HeadScores:
    """Score every head's QK and attention accuracy on MCQA; compare the best head with the model.

    Args:
        key: key token per option: ``eol`` (the paper's end-of-line token) or ``letter``.
        qk: QK-score vectors: ``projected`` (the paper's, before RoPE) or ``scores``
            (the pre-softmax attention score, after RoPE).
        batch_size: questions per forward pass.
        progress: unused; accepted for the CLI.

    Returns:
        HeadScores with metrics ``qk_acc_val``, ``attn_acc_val``, ``qk_acc_test``, ``attn_acc_test``.
    """
    if key not in KEY_TOKENS:
        raise HeadscopeError(f"key must be one of {', '.join(KEY_TOKENS)}; got '{key}'.")
    if qk not in QK_MODES:
        raise HeadscopeError(f"qk must be one of {', '.join(QK_MODES)}; got '{qk}'.")
    val, test = task.split(model)
    accs: dict[str, np.ndarray] = {}
    for split, items in (("val", val), ("test", test)):
        qk_s, att = option_scores(model, items, batch_size, key, qk)
        gold = np.array([it.answer for it in items])[:, None, None]
        accs[f"qk_acc_{split}"] = (qk_s.argmax(-1) == gold).mean(0)
        accs[f"attn_acc_{split}"] = (att.argmax(-1) == gold).mean(0)
    model_acc = float((letter_answers(model, test) == np.array([it.answer for it in test])).mean())

    def best(primary: str, secondary: str) -> tuple[int, int]:
        flat = [(accs[primary][layer, h], accs[secondary][layer, h], -layer, -h) for layer in range(model.n_layers) for h in range(model.n_heads)]
        _, _, nl, nh = max(flat)
        return -nl, -nh

    bq, ba = best("qk_acc_val", "attn_acc_val"), best("attn_acc_val", "qk_acc_val")
    choices = {
        "score": ("QK: q . k of the projected query and key before RoPE" if qk == "projected"
                  else "QK: pre-softmax attention score q . k / sqrt(d_head) after RoPE")
        + ", last query -> each option's key token; attention: softmax weight there",
        "key": key,
        "key_token": "the end-of-line token after the option's text" if key == "eol"
        else "the token holding the option letter at the start of its line",
        "selection": "best head by validation accuracy (ties: the other score, then lower layer/head)",
        "best_qk_head": f"{bq[0]}.{bq[1]}", "best_attn_head": f"{ba[0]}.{ba[1]}",
        "test_acc_best_qk_head": float(accs["qk_acc_test"][bq]), "test_acc_best_attn_head": float(accs["attn_acc_test"][ba]),
        "test_acc_model_letters": model_acc, "n_val": len(val), "n_test": len(test),
        "chance": float(np.mean([1.0 / it.n_options for it in test])),
    }
    prov = build_provenance(model, task=task.describe(), analyzer="select_and_copy", options={"key": key, "qk": qk, "batch_size": batch_size}, choices=choices)
    common = {"model": model.spec, "task": task.name, "analyzer": "select_and_copy"}
    return HeadScores.concat(
        [HeadScores.from_matrix(v, metric=k, extra={"n": len(val) if k.endswith("val") else len(test)}, **common) for k, v in accs.items()],
        provenance=prov,
    )
