"""Training TopK SAEs with sae-lens on a vector stream: format on disk, metrics, reuse, atomicity, seeds."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from introspect_mi.errors import UserError
from introspect_mi.hooks import recording
from introspect_mi.places import Place, PlaceKind
from introspect_mi.saes import train as train_module
from introspect_mi.saes.load import load_sae
from introspect_mi.saes.metrics import reconstruction_metrics, spliced_loss
from introspect_mi.saes.train import SAETrainConfig, sae_dir, train_sae
from tests.race import Race

D = 16
PLACE = Place(PlaceKind.RESID_POST, 1)
CFG = SAETrainConfig(d_sae=32, k=4, lr=1e-2, training_samples=8192, batch_size=256, eval_samples=256,
                     shuffle_buffer=1024, norm_estimate_batches=2, device="cpu")


def low_rank_vectors(n: int = 3072, seed: int = 0) -> torch.Tensor:
    """Vectors near a 4-dim subspace: an SAE with k=4 can explain most of their variance."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen) @ torch.randn(4, D, generator=gen) * 5 + 0.1 * torch.randn(n, D, generator=gen)


def chunks(x: torch.Tensor, size: int = 300) -> list[torch.Tensor]:
    return list(x.split(size))  # uneven sizes: the trainer re-batches


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = low_rank_vectors()
    out = tmp_path_factory.mktemp("train") / "sae"
    return data, train_sae(chunks(data), D, CFG, out, PLACE, fingerprint="tiny-fp", data={"source": "low-rank"})


def test_saves_sae_lens_format_with_our_sidecar(trained) -> None:
    _data, loaded = trained
    folder = loaded.folder
    assert {p.name for p in folder.iterdir()} == {"cfg.json", "sae_weights.safetensors", "introspect_mi_sae.json"}
    assert json.loads((folder / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.1.hook_out"
    meta = json.loads((folder / "introspect_mi_sae.json").read_text())
    assert meta["place"] == "resid_post[1]" and meta["model_fingerprint"] == "tiny-fp"
    assert meta["config"]["k"] == 4 and meta["data"] == {"source": "low-rank"}
    assert meta["training"]["steps"] == 32 and meta["d_sae"] == 32
    assert loaded.place == PLACE and type(loaded.sae).__name__ == "TopKSAE"
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == [".sae.lock"]  # no staging left behind


def test_metrics_are_measured_on_the_held_out_head(trained) -> None:
    data, loaded = trained
    again = reconstruction_metrics(loaded.sae, [data[: CFG.eval_samples]])
    saved = loaded.meta["metrics"]
    assert saved["n_vectors"] == CFG.eval_samples
    assert saved["explained_variance"] == pytest.approx(again.explained_variance, rel=1e-9)
    assert saved["l0"] == pytest.approx(again.l0) and saved["l0"] <= 4
    assert saved["explained_variance"] > 0.6  # it learned the subspace
    assert 0 <= saved["dead_fraction"] < 1


def test_round_trip_reproduces_activations(trained) -> None:
    data, loaded = trained
    again = load_sae(loaded.folder)
    with torch.no_grad():
        f = loaded.sae.encode(data[:100])
        assert torch.equal(again.sae.encode(data[:100]), f)
        assert torch.equal(again.sae.decode(f), loaded.sae.decode(f))


def test_same_config_reuses_the_folder_without_training(trained, monkeypatch) -> None:
    data, loaded = trained
    monkeypatch.setattr(train_module, "_fit", lambda *a, **k: pytest.fail("trained again"))
    stale = loaded.folder.parent / f".{loaded.folder.name}.partial-killed"  # a killed run's staging
    (stale / "sae").mkdir(parents=True)
    again = train_sae(chunks(data), D, CFG, loaded.folder, PLACE, fingerprint="tiny-fp", data={"source": "low-rank"})
    assert torch.equal(again.sae.W_enc, loaded.sae.W_enc)
    assert not stale.exists()  # removed even when nothing is trained


@pytest.mark.parametrize("change", [
    {"cfg": replace(CFG, k=5)}, {"fingerprint": "other-model"}, {"place": "resid_post[2]"}, {"data": {"source": "else"}},
])
def test_anything_else_in_the_same_folder_is_refused(trained, change) -> None:
    data, loaded = trained
    args = {"cfg": CFG, "fingerprint": "tiny-fp", "place": PLACE, "data": {"source": "low-rank"}, **change}
    with pytest.raises(UserError, match="already holds an SAE trained with a different"):
        train_sae(chunks(data), D, args["cfg"], loaded.folder, args["place"], fingerprint=args["fingerprint"], data=args["data"])


def test_same_seed_reproduces_and_another_seed_differs(trained, tmp_path) -> None:
    data, loaded = trained
    same = train_sae(chunks(data), D, CFG, tmp_path / "same", PLACE, fingerprint="tiny-fp")
    other = train_sae(chunks(data), D, replace(CFG, seed=1), tmp_path / "other", PLACE, fingerprint="tiny-fp")
    assert torch.equal(same.sae.W_dec, loaded.sae.W_dec)
    assert not torch.allclose(other.sae.W_dec, loaded.sae.W_dec)


def test_a_list_is_cycled_for_more_epochs(tmp_path) -> None:
    data = low_rank_vectors(n=700)  # 444 training vectors per pass, 8192 wanted
    (tmp_path / "sae").mkdir()  # an empty folder made beforehand is fine
    loaded = train_sae(chunks(data, 100), D, CFG, tmp_path / "sae", PLACE, fingerprint="fp")
    assert loaded.meta["training"]["samples"] == 8192


def test_one_shot_iterator_that_runs_out_leaves_nothing(tmp_path) -> None:
    data = low_rank_vectors(n=700)
    with pytest.raises(UserError, match="ran out of vectors.*one-shot") as err:
        train_sae(iter(chunks(data)), D, CFG, tmp_path / "sae", PLACE, fingerprint="fp")
    assert "re-iterable" in err.value.fix
    assert [p.name for p in tmp_path.iterdir()] == [".sae.lock"]


def test_killed_training_leaves_no_folder(tmp_path) -> None:
    def broken():
        yield from chunks(low_rank_vectors(n=600))
        raise KeyboardInterrupt

    class Broken:
        def __iter__(self):
            return broken()

    with pytest.raises(KeyboardInterrupt):
        train_sae(Broken(), D, CFG, tmp_path / "sae", PLACE, fingerprint="fp")
    assert [p.name for p in tmp_path.iterdir()] == [".sae.lock"]  # the (free) lock file only


def test_two_processes_training_one_sae_train_it_once(tmp_path, monkeypatch) -> None:
    """The second starts while the first trains: it waits and reuses the SAE, instead of training
    too and making the first's rename fail (or removing its staging folder as stale)."""
    data = low_rank_vectors(n=700)
    real_fit, fits = train_module._fit, []

    def paused_fit(*args, **kwargs):
        race.pause()
        fits.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train_module, "_fit", paused_fit)

    def train():
        return train_sae(chunks(data, 100), D, CFG, tmp_path / "sae", PLACE, fingerprint="fp")

    race = Race(train, train)
    outcome = race.run()
    assert len(fits) == 1, outcome
    assert torch.equal(outcome["first"].sae.W_dec, outcome["second"].sae.W_dec)  # one SAE, read twice
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sae.lock", "sae"]


def test_bad_config_and_bad_shapes(tmp_path) -> None:
    with pytest.raises(UserError, match="k=40 must be between 1 and the number of latents"):
        train_sae(chunks(low_rank_vectors()), D, replace(CFG, k=40), tmp_path / "a", PLACE, fingerprint="fp")
    with pytest.raises(ValueError, match=r"\[n, 16\]"):
        train_sae([torch.randn(10, 15)], D, CFG, tmp_path / "b", PLACE, fingerprint="fp")


def test_sae_dir_is_one_folder_per_config(checkpoints) -> None:
    a = sae_dir("base+adapter", PLACE, CFG)
    assert a.parent == checkpoints / "saes" / "base+adapter" and a.name.startswith("resid_post.1-")
    assert sae_dir("base+adapter", PLACE, replace(CFG, k=5)) != a
    assert sae_dir("base+adapter", PLACE, replace(CFG, device="cuda")) == a


def test_trains_on_tiny_model_activations_and_splices_back(tiny, token_lists, tmp_path) -> None:
    with torch.no_grad(), recording(tiny.model, [PLACE]) as acts:
        vectors = []
        for seq in token_lists:
            tiny.model(input_ids=torch.tensor([seq]))
            vectors.append(acts[PLACE][0])
    data = torch.cat(vectors)  # 42 real activation vectors of width 64
    cfg = replace(CFG, d_sae=128, k=8, training_samples=512, batch_size=32, eval_samples=10, shuffle_buffer=64)
    loaded = train_sae([data], 64, cfg, tmp_path / "sae", PLACE, fingerprint=tiny.fingerprint, data={"n": len(data)})
    assert loaded.meta["model_fingerprint"] == tiny.fingerprint
    assert load_sae(loaded.folder, handle=tiny).place == PLACE
    result = spliced_loss(tiny, loaded.sae, PLACE, token_lists)
    assert result.n_tokens == sum(len(s) - 1 for s in token_lists) and result.spliced != result.clean


@pytest.mark.slow
def test_embedded_smollm2_sae_trains_loads_and_splices(tmp_path) -> None:
    """The real M1 (d_model 576): an SAE on resid_post[9] round-trips and splicing it costs loss."""
    from introspect_mi.models import load

    handle = load("smollm2-135m-instruct")
    place = Place(PlaceKind.RESID_POST, 9)
    texts = ["The capital of France is Paris.", "What is the next animal: cat dog fox", "Count: one two three four five six"]
    sequences = [handle.tokenizer(t)["input_ids"] for t in texts]
    with torch.no_grad(), recording(handle.model, [place]) as acts:
        vectors = []
        for seq in sequences:
            handle.model(input_ids=torch.tensor([seq]))
            vectors.append(acts[place][0, 1:])  # skip the first token (huge norm)
    data = torch.cat(vectors)
    cfg = SAETrainConfig(expansion=2, k=16, lr=1e-3, training_samples=2048, batch_size=64, eval_samples=8, shuffle_buffer=64, device="cpu")
    loaded = train_sae([data], handle.d_model, cfg, tmp_path / "sae", place, fingerprint=handle.fingerprint)
    again = load_sae(loaded.folder, handle=handle)
    assert again.place == place and again.d_sae == 2 * 576
    with torch.no_grad():
        assert torch.equal(again.sae.encode(data), loaded.sae.encode(data))
    result = spliced_loss(handle, again.sae, place, sequences, splice_from=1)
    assert result.delta > 0 and result.n_tokens == sum(len(s) - 1 for s in sequences)
