"""Adapter and re-running-metric cases a second audit found: models sharing a submodule explained in two threads
leave it as it was; a forward ending in .squeeze() works on a one-row chunk; an explainer object shared by threads
records each call's own seed; token ids to an nn.Embedding model get a WhyboxError; a float32 network with one
float64 parameter runs in float32; an embedding adapter checks its names; a model on 'meta' is named; adapt(layers=2);
ROAR checks its options; stability pools |a| over channels; a re-run's bad option is named."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidInputError, InvalidParameterError, UnknownNameError


def test_models_sharing_a_backbone_in_two_threads_leave_it_as_it_was() -> None:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1))

    class Head(nn.Module):
        def __init__(self, k: int, delay: float) -> None:
            super().__init__()
            self.backbone, self.fc, self.delay = backbone, nn.Linear(16, k), delay

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            time.sleep(self.delay)
            return self.fc(self.backbone(x))

    a, b = Head(3, 0.2).train(), Head(2, 0.4).train()
    x = torch.randn(2, 6)

    def second() -> None:
        time.sleep(0.05)
        whybox.explain(b, x, "saliency")

    threads = [threading.Thread(target=lambda: whybox.explain(a, x, "saliency")), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(m.training for m in backbone.modules())
    assert all(p.requires_grad for p in backbone.parameters())


def test_a_squeezed_forward_works_on_a_one_row_chunk() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(4, 5)

    class Squeezed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return lin(x).squeeze()

    x = torch.rand(3, 4)
    whole = whybox.explain(Squeezed(), x, "saliency", batch_size=3)
    chunks = whybox.explain(Squeezed(), x, "saliency", batch_size=2)  # the last chunk holds one row
    assert torch.equal(whole.attributions, chunks.attributions)
    assert whybox.explain(Squeezed(), x[:1], "feature_ablation").attributions.shape == (1, 4)


def test_an_explainer_shared_by_threads_records_each_call_s_seed() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.rand(2, 3, 2, 2)
    shared = whybox.get_explainer("rise")(model, seed=None, n_masks=20)
    out: list[whybox.Explanation] = []
    threads = [threading.Thread(target=lambda: out.append(shared.explain(x))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for e in out:
        again = whybox.explain(model, x, "rise", seed=e.meta["seed"], n_masks=20)
        assert torch.equal(again.attributions, e.attributions)


def test_token_ids_to_an_embedding_model_are_named() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2))
    ids = torch.randint(0, 10, (2, 3))
    with pytest.raises(InvalidInputError, match=r"token ids.*whybox\.explain_text"):
        whybox.explain(model, ids, "feature_ablation")


def test_a_float32_network_with_one_float64_parameter_runs_in_float32() -> None:
    class Tempered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.temperature = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))  # registered first
            self.net = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x) / self.temperature.float()

    x = torch.rand(2, 4)
    e = whybox.explain(Tempered(), x, "saliency")
    assert e.attributions.dtype == torch.float32


def test_adapter_names_devices_and_layers() -> None:
    emb = nn.Linear(4, 3)
    refs = torch.rand(2, 3)
    a = whybox.adapt(emb, kind="embedding", references=refs, labels=["dog", "cat", "car"])
    with pytest.raises(InvalidParameterError, match=r"labels= names 3 outputs .* gives 2 scores"):
        whybox.explain(a, torch.rand(2, 4), "saliency")
    meta = nn.Linear(4, 2, device="meta")
    with pytest.raises(InvalidParameterError, match="'meta' device"):
        whybox.explain(meta, torch.rand(2, 4), "saliency")
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(),
                        nn.Linear(4 * 36, 2))  # fmt: skip
    assert whybox.adapt(cnn, layers=2).default_layers == ["2"]


def test_roar_checks_its_options() -> None:
    from whybox.metrics.roar import roar

    g = torch.Generator().manual_seed(0)
    data = (torch.rand(8, 1, 8, 8, generator=g), torch.arange(8) % 2, torch.rand(4, 1, 8, 8, generator=g),
            torch.arange(4) % 2)  # fmt: skip
    with pytest.raises(InvalidParameterError, match="explain_params has options for 'smoothgrd'"):
        roar({"sg": "smoothgrad"}, data=data, explain_params={"smoothgrd": {"n_samples": 2}}, n_retrain=1, epochs=1)
    with pytest.raises(InvalidParameterError, match="keep must be True or False"):
        roar(["saliency"], data=data, keep="yes", n_retrain=1, epochs=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="seed must be an int >= 0"):
        roar(["saliency"], data=data, seed=-1, n_retrain=1, epochs=1)


def test_stability_pools_magnitudes_over_channels_and_rerun_errors_name_their_option() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2)).eval()
    x = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    r = whybox.evaluate(model, x, "smoothgrad", "stability", n_runs=3, k=5, explainer_params={"n_samples": 4})
    maps = [whybox.explain(model, x, "smoothgrad", seed=s, n_samples=4).attributions for s in (0, 1, 2)]
    tops = [set(m.abs().sum(1).flatten().topk(5).indices.tolist()) for m in maps]
    pairs = [(0, 1), (0, 2), (1, 2)]
    jaccard = sum(len(tops[i] & tops[j]) / len(tops[i] | tops[j]) for i, j in pairs) / 3
    assert float(r.meta["jaccard"][0]) == pytest.approx(jaccard)
    e = whybox.explain(model, x, "smoothgrad", n_samples=4)
    with pytest.raises(InvalidParameterError, match=r"explainer_params \(n_samples\): n_samples must be"):
        whybox.evaluate(model, x, e, "max_sensitivity", n_samples=2, explainer_params={"n_samples": -1})
    with pytest.raises(UnknownNameError, match="explainer='limee'"):
        whybox.evaluate(model, x, e, "stability", explainer="limee")
