from __future__ import annotations

import io
import math

import numpy as np
import pytest
from rich.console import Console

from pfl.data.stats import federation_stats, js_divergence, print_stats
from pfl.data.types import Client, Federation, Split


def client(cid, train, val=(), test=(), federated=True):
    def sp(labels):
        y = np.asarray(labels, dtype=np.int64)
        return Split.from_numpy(np.zeros((len(y), 8), np.float32), y)

    return Client(cid, sp(train), sp(val), sp(test), records=[cid], federated=federated)


def test_identical_distribution_has_zero_divergence():
    assert js_divergence([3, 1, 0], [30, 10, 0]) == pytest.approx(0, abs=1e-12)
    fed = Federation(
        "x", ["N", "S"], [client("a", [0, 0, 1], test=[0]), client("b", [0, 1], [0, 0])]
    )
    st = federation_stats(fed)
    assert [c.jsd for c in st.clients] == pytest.approx([0, 0], abs=1e-12)
    assert st.jsd_mean == pytest.approx(0, abs=1e-12)


def test_hand_checked_value():
    # a: all N, b: all S -> pooled (1/2, 1/2). JSD(a, pooled) = H(3/4, 1/4) - (H(a) + H(pooled))/2
    # = 0.811278 - 0.5 (base 2).
    want = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)) - 0.5
    fed = Federation(
        "x", ["N", "S"], [client("a", [0, 0], test=[0, 0]), client("b", [1, 1], val=[1, 1])]
    )
    st = federation_stats(fed)
    assert want == pytest.approx(0.311278, abs=1e-6)
    assert [c.jsd for c in st.clients] == pytest.approx([want, want])
    assert st.jsd_mean == pytest.approx(want)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert st.pooled.tolist() == [4, 4]
    assert st.clients[0].counts["test"].tolist() == [2, 0]
    assert st.clients[1].counts["val"].tolist() == [0, 2]


def test_unseen_clients_and_printing():
    fed = Federation(
        "x",
        ["N", "S", "V"],
        [client("a", [0, 0, 1], test=[2]), client("b", [0], test=[0], federated=False)],
    )
    st = federation_stats(fed)
    assert st.jsd_mean_federated == pytest.approx(st.clients[0].jsd)
    buf = io.StringIO()
    out = print_stats(fed, Console(file=buf, width=120))
    text = buf.getvalue()
    assert out.jsd_mean == pytest.approx(st.jsd_mean)
    assert "unseen" in text and "mean JSD over clients" in text and "federated clients only" in text
    assert st.as_dict()["clients"][1]["federated"] is False
