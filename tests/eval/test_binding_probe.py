"""`python -m eval binding-probe`: the memory-free BCT and the plain Llama are one model (same initial
weights from the same seed, same rows), so their training curves agree step for step."""

import pytest

from eval.tools.binding_probe import main


def test_bct_without_memory_trains_like_llama(tmp_path):
    payload = main(["--steps", "6", "--log-every", "2", "--batch-size", "4", "--seq-len", "32"])
    llama, bct = payload["curves"]["llama"], payload["curves"]["bct"]
    assert [p["step"] for p in llama] == [2, 4, 6]
    for a, b in zip(llama, bct):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4) and a["accuracy"] == b["accuracy"]
    assert llama[-1]["loss"] < llama[0]["loss"]  # it trains


def test_rows_too_short_for_the_pairs_are_refused():
    with pytest.raises(SystemExit):
        main(["--seq-len", "8", "--pairs", "2"])


def test_copy_rows_add_their_loss_and_bad_shares_are_refused():
    base = ["--models", "llama", "--steps", "2", "--log-every", "1", "--batch-size", "4", "--seq-len", "32"]
    plain = main(base)["curves"]["llama"]
    with_copies = main([*base, "--copy-rows", "2", "--copy-len", "16", "--copy-span", "4"])["curves"]["llama"]
    # Same key-value rows and the same first weights: the copy rows' loss is added on top.
    assert with_copies[0]["accuracy"] == plain[0]["accuracy"]
    assert with_copies[0]["loss"] > plain[0]["loss"] + 1.0
    for bad in (["--copy-rows", "-1"], ["--copy-rows", "2", "--copy-span", "20"]):
        with pytest.raises(SystemExit):
            main([*base, *bad])
