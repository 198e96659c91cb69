"""MQAR in words (data/text_recall.py): exact lengths, each answer is the value paired with its key earlier,
labels only on the answers, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data import IGNORE_INDEX
from data.text_recall import TEXT_MQAR_KEYS, make_text_mqar_example, text_mqar_fixed_length
from eval.scoring import answer_runs


@pytest.mark.parametrize(("pairs", "queries"), [(1, 1), (4, 4), (16, 8)])
def test_each_answer_is_the_value_paired_with_its_key(tokenizer, corpus, pairs, queries):
    filler = corpus.validation.flatten().numpy()
    seq_len = text_mqar_fixed_length(tokenizer, pairs, queries) + 50
    example = make_text_mqar_example(tokenizer, filler, pairs, queries, seq_len, np.random.default_rng(4))
    ids, labels, positions = example["input_ids"], example["labels"], example["answer_positions"]
    assert ids.shape == labels.shape == (seq_len,)
    assert positions.max() == seq_len - 1  # the example ends on its last answer
    assert torch.equal(labels[positions], ids[positions])
    assert int((labels != IGNORE_INDEX).sum()) == len(positions)
    text = tokenizer.decode(ids.tolist())
    paired = dict(  # "The code for apple is 417." in the pairs, before the filler
        line.removeprefix("The code for ").removesuffix(".").split(" is ")
        for line in text.split("\n")[1 : 1 + pairs]
    )
    assert len(paired) == pairs and set(paired) <= set(TEXT_MQAR_KEYS)
    assert len(set(paired.values())) == pairs  # distinct values: the bag-of-values level is 1/pairs
    runs = answer_runs(positions)
    assert len(runs) == queries
    asked = []
    for first, end in runs:
        answer = tokenizer.decode(ids[first:end].tolist()).strip()
        question = tokenizer.decode(ids[:first].tolist()).rsplit("\n", 1)[-1]  # "The code for apple is"
        key = question.removeprefix("The code for ").removesuffix(" is")
        assert paired[key] == answer
        # the answer's ids occur before the questions, inside its pair (the value is tokenized once)
        before = int(positions.min()) - (end - first)  # windows that end before the first answer
        assert any(torch.equal(ids[p : p + end - first], ids[first:end]) for p in range(before))
        asked.append(key)
    assert len(set(asked)) == queries


def test_refusals_name_the_value_and_the_limit(tokenizer):
    filler = np.arange(5, 100)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=rf"num_pairs = 65 .*{len(TEXT_MQAR_KEYS)} key words"):
        make_text_mqar_example(tokenizer, filler, 65, 1, 4096, rng)
    with pytest.raises(ValueError, match=r"num_queries = 5 .*num_pairs = 4"):
        make_text_mqar_example(tokenizer, filler, 4, 5, 4096, rng)
    with pytest.raises(ValueError, match=r"seq_len = 40 .*at least \d+ tokens for 4 pairs"):
        make_text_mqar_example(tokenizer, filler, 4, 2, 40, rng)
    with pytest.raises(ValueError, match=r"filler_ids = \[\]"):
        make_text_mqar_example(tokenizer, [], 4, 2, 4096, rng)
