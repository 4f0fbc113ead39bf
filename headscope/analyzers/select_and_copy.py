"""Select-and-copy heads for multiple choice (Tulchinskii et al. 2024, "Listening to the Wise Few:
Select-and-Copy Attention Heads for Multiple-Choice QA").

For each question (task ``mcqa``) and head, at the prompt's last token ("Answer:"):

- QK-score of option ``j``: the head's pre-softmax attention score from the last query to the
  key at option ``j``'s marker token (``q . k / sqrt(d_head)`` after RoPE, i.e. the
  ``hook_attn_scores`` entry);
- attention score of option ``j``: the softmaxed attention weight there.

The head answers the option with the highest score. Heads are scored by accuracy on the
validation split (``qk_acc_val``, ``attn_acc_val``) and on the test split (``qk_acc_test``,
``attn_acc_test``). The best head is chosen on validation only (highest ``qk_acc_val``, ties
broken by ``attn_acc_val``, then by layer/head order); its *test* accuracy is reported next to
the model's own answer, the argmax of its next-token logits over the letters (`` A``, `` B``,
...; the leading-space form, else the bare letter), on the same test questions.

Provenance ``choices`` holds the best heads and the three test accuracies.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope.analyzers.registry import register_analyzer
from headscope.lens.core import final_logits
from headscope.results import HeadScores, build_provenance
from headscope.tasks.mcqa import LETTERS, MCQAItem
from headscope.tasks.relations import single_token_id
from headscope.trace import trace
from headscope.trace.stream import capture_stream


def option_scores(model: Any, items: list[MCQAItem], batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per item, layer, head and option: (QK scores, attention weights) at the last query.

    Returns:
        Two arrays of shape (n_items, n_layers, n_heads, n_options) (options padded with -inf).
    """
    n_opt = max(it.n_options for it in items)
    qk = np.full((len(items), model.n_layers, model.n_heads, n_opt), -np.inf)
    att = np.full_like(qk, -np.inf)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        tokens, last = _pad(model, chunk)
        tr = trace(model, tokens, acts=["scores", "pattern"])
        for layer in range(model.n_layers):
            sc = tr.get("scores", layer).float().cpu()  # (b, head, q, k)
            pa = tr.get("pattern", layer).float().cpu()
            for i, it in enumerate(chunk):
                m = torch.tensor(it.markers)
                qk[start + i, layer, :, : it.n_options] = sc[i, :, int(last[i]), m].numpy()
                att[start + i, layer, :, : it.n_options] = pa[i, :, int(last[i]), m].numpy()
    return qk, att


def _pad(model: Any, items: list[MCQAItem]) -> tuple[torch.Tensor, torch.Tensor]:
    from headscope.tasks.mcqa import MCQATask

    return MCQATask.batch(model, items)


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
    summary="select-and-copy heads (Tulchinskii et al. 2024): answer MCQA by a head's QK/attention to option markers",
    tasks=("mcqa",),
)
def select_and_copy(model: Any, task: Any, batch_size: int = 8, progress: bool = False) -> HeadScores:
    """Score every head's QK and attention accuracy on MCQA; compare the best head with the model.

    Args:
        batch_size: questions per forward pass.
        progress: unused; accepted for the CLI.

    Returns:
        HeadScores with metrics ``qk_acc_val``, ``attn_acc_val``, ``qk_acc_test``, ``attn_acc_test``.
    """
    val, test = task.split(model)
    accs: dict[str, np.ndarray] = {}
    for split, items in (("val", val), ("test", test)):
        qk, att = option_scores(model, items, batch_size)
        gold = np.array([it.answer for it in items])[:, None, None]
        accs[f"qk_acc_{split}"] = (qk.argmax(-1) == gold).mean(0)
        accs[f"attn_acc_{split}"] = (att.argmax(-1) == gold).mean(0)
    model_acc = float((letter_answers(model, test) == np.array([it.answer for it in test])).mean())

    def best(primary: str, secondary: str) -> tuple[int, int]:
        flat = [(accs[primary][layer, h], accs[secondary][layer, h], -layer, -h) for layer in range(model.n_layers) for h in range(model.n_heads)]
        _, _, nl, nh = max(flat)
        return -nl, -nh

    bq, ba = best("qk_acc_val", "attn_acc_val"), best("attn_acc_val", "qk_acc_val")
    choices = {
        "score": "QK: pre-softmax attention score last query -> option marker key; attention: softmax weight",
        "marker": "the token holding the option letter at the start of its line",
        "selection": "best head by validation accuracy (ties: the other score, then lower layer/head)",
        "best_qk_head": f"{bq[0]}.{bq[1]}", "best_attn_head": f"{ba[0]}.{ba[1]}",
        "test_acc_best_qk_head": float(accs["qk_acc_test"][bq]), "test_acc_best_attn_head": float(accs["attn_acc_test"][ba]),
        "test_acc_model_letters": model_acc, "n_val": len(val), "n_test": len(test),
        "chance": float(np.mean([1.0 / it.n_options for it in test])),
    }
    prov = build_provenance(model, task=task.describe(), analyzer="select_and_copy", options={"batch_size": batch_size}, choices=choices)
    common = {"model": model.spec, "task": task.name, "analyzer": "select_and_copy"}
    return HeadScores.concat(
        [HeadScores.from_matrix(v, metric=k, extra={"n": len(val) if k.endswith("val") else len(test)}, **common) for k, v in accs.items()],
        provenance=prov,
    )
