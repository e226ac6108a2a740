"""Feature pages on synthetic data: example tables, token context, the logit effect (against a
hand computation through the model's output modules) and the written pages."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from introspect_mi.places import Place, PlaceKind
from introspect_mi.saes.pages import FeaturePage, logit_effect, page_file, token_context, top_examples, visible, write_feature_pages
from tests.saes.builders import random_topk

PLACE = Place(PlaceKind.RESID_POST, 16)


def synthetic_page(feature: int = 42) -> FeaturePage:
    meta = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "token": ["x", "y", "<z>", "w"]})
    tokens = pd.DataFrame({"token": ["p", "q"], "context": [token_context(["A", "p", "B"], 1), token_context(["q", "C"], 0)]})
    return FeaturePage(
        PLACE, feature, pd.DataFrame({"what": ["why"], "value": ["attribution rank 1 for untrained"]}),
        {"untrained · hypothetical · final": np.array([0.0, 1.5, 2.5, 0.0]), "self · hypothetical · final": np.array([3.0, 0.0])},
        top_examples(np.array([0.0, 2.0, 5.0, 1.0]), meta, 3), top_examples(np.array([0.7, 0.2]), tokens, 5),
        pd.DataFrame({"token": [" cat", " dog", "<b>"], "logit": [3.0, 1.0, -2.0]}),
    )


def test_top_examples_are_the_largest_positive_activations_in_order() -> None:
    meta = pd.DataFrame({"item_id": ["a", "b", "c", "d", "e"]})
    got = top_examples(np.array([0.5, 0.0, 3.0, -1.0, 2.0]), meta, 4)
    assert got["item_id"].tolist() == ["c", "e", "a"]  # silent (0) and negative rows never appear
    assert got["activation"].tolist() == [3.0, 2.0, 0.5]
    assert top_examples(torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0]), meta, 1)["item_id"].tolist() == ["b"]
    with pytest.raises(ValueError, match="metadata rows"):
        top_examples(np.zeros(3), meta, 2)


def test_top_examples_show_a_repeated_vector_once() -> None:
    meta = pd.DataFrame({"item_id": ["a", "a", "a", "b"], "property": ["p", "q", "r", "p"]})
    values = np.array([2.0, 2.0, 1.0, 1.5])
    assert len(top_examples(values, meta, 4)) == 4  # rows differ in their property
    got = top_examples(values, meta, 4, distinct=["item_id"])
    assert got[["item_id", "property", "activation"]].values.tolist() == [["a", "p", 2.0], ["b", "p", 1.5], ["a", "r", 1.0]]


def test_token_context_marks_the_token_and_elides_the_rest() -> None:
    tokens = ["<s>", "The", " cat", " sat", "\n", "on", " the", " mat"]
    assert token_context(tokens, 2, width=1) == "…The⟦ cat⟧ sat…"
    assert token_context(tokens, 0, width=2) == "⟦<s>⟧The cat…"
    assert token_context(tokens, 7, width=3) == "…⏎on the⟦ mat⟧"
    assert visible("a\nb") == "a⏎b"
    with pytest.raises(ValueError, match="outside"):
        token_context(tokens, 8)


def test_page_file_names_place_and_latent() -> None:
    assert page_file(PLACE, 42) == "resid_post.16-f00042.html"
    assert page_file(Place(PlaceKind.FINAL_NORM), 7) == "final_norm-f00007.html"


def test_logit_effect_is_the_direction_through_norm_and_unembedding(tiny) -> None:
    sae = random_topk(tiny.d_model, 32, k=4)
    got = logit_effect(tiny, sae, 5, n=3)
    with torch.no_grad():
        direction = sae.W_dec[5].float()
        normed = direction * torch.rsqrt(direction.pow(2).mean() + tiny.config.rms_norm_eps) * tiny.model.model.norm.weight
        logits = normed @ tiny.model.lm_head.weight.T
    expected = logits.topk(3).indices.tolist() + logits.topk(3, largest=False).indices.tolist()
    assert got["token_id"].tolist() == expected
    np.testing.assert_allclose(got["logit"], logits[expected].numpy(), rtol=1e-5, atol=1e-5)
    assert got["token"].tolist() == [tiny.tokenizer.decode([i]) for i in expected]


def test_pages_share_one_plotly_file_and_show_their_data(tmp_path) -> None:
    pages = [synthetic_page(42), synthetic_page(7)]
    paths = write_feature_pages(tmp_path / "features", pages, back_link="../report.html")
    assert [p.name for p in paths] == ["resid_post.16-f00042.html", "resid_post.16-f00007.html"]
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == sorted([*[p.name for p in paths], "plotly.min.js"])
    html = paths[0].read_text()
    assert '<script type="text/javascript" src="plotly.min.js"></script>' in html
    assert len(html) < 200_000  # plotly.js is not inlined
    assert html.count('<div id="fig-') == 2  # histogram and logit effect
    assert "SAE latent 42 at resid_post[16]" in html and "attribution rank 1 for untrained" in html
    assert "&lt;z&gt;" in html and "<z>" not in html  # token text is escaped
    assert "active 50% of 4" in html  # the histogram legend counts silent vectors too
    assert '<a href="../report.html">' in html


def test_a_page_without_data_has_only_its_summary(tmp_path) -> None:
    page = FeaturePage(PLACE, 1, pd.DataFrame({"what": ["latent"], "value": ["1"]}))
    (path,) = write_feature_pages(tmp_path, [page])
    html = path.read_text()
    assert "Summary" in html and '<div id="fig-' not in html and "Logit effect" not in html
