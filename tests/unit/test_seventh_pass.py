"""Seventh-pass fixes: each test states the property a user relied on and failed before the fix."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from torch import nn

import whybox


class GRUNet(nn.Module):
    def __init__(self, d: int = 3, k: int = 4) -> None:
        super().__init__()
        self.rnn = nn.GRU(d, 5, batch_first=True)
        self.head = nn.Linear(5, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class SignalTwin(nn.Module):
    """The GRU read as a Conv1d signal model (B, D, T): an identity 1 x 1 convolution, then the GRU over time."""

    def __init__(self, inner: GRUNet, d: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d, d, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(d, dtype=self.conv.weight.dtype).unsqueeze(-1))
        self.inner = inner

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.inner(self.conv(s).transpose(1, 2))


def _gru(seed: int = 0) -> tuple[GRUNet, torch.Tensor]:
    torch.manual_seed(seed)
    return GRUNet().double().eval(), torch.randn(3, 9, 3, dtype=torch.float64)


def test_road_on_a_sequence_equals_road_on_its_signal_twin() -> None:
    """ROAD on a recurrent model's sequences (B, T, D) ranks time steps and imputes each removed step's features from
    the neighbouring steps: the numbers of the same model read as a Conv1d signal (B, D, T) (it refused them)."""
    model, x = _gru()
    e = whybox.explain(model, x, "saliency")
    twin = SignalTwin(model).double().eval()
    for orders in ("both", "morf"):
        got = whybox.evaluate(model, x, e, "road", noise=0.0, orders=orders, fractions=(0.2, 0.5, 0.8))
        want = whybox.evaluate(
            twin, x.transpose(1, 2), e.attributions.transpose(1, 2), "road", target=e.target, noise=0.0,
            orders=orders, fractions=(0.2, 0.5, 0.8),
        )  # fmt: skip
        torch.testing.assert_close(got.scores, want.scores, rtol=1e-12, atol=1e-12)
        for k in want.curves:
            torch.testing.assert_close(got.curves[k], want.curves[k], rtol=1e-12, atol=1e-12, equal_nan=True)


def test_road_on_a_sequence_imputes_a_removed_step_from_its_neighbours() -> None:
    """One step of five removed (the top-ranked, p = 0.2, no noise): the model reads that step as the mean of the
    steps before and after it, all D features alike; a (B, T) map of one value per step ranks the same steps."""
    model, x = _gru()
    x = x[:, :5]
    a = torch.zeros(3, 5)
    a[:, 2] = 1.0  # step 2 first
    r = whybox.evaluate(model, x, a, "road", target=0, noise=0.0, orders="morf", fractions=(0.2,))
    imputed = x.clone()
    imputed[:, 2] = (x[:, 1] + x[:, 3]) / 2
    with torch.no_grad():
        want = model(imputed).softmax(1)[:, 0]
    torch.testing.assert_close(r.curves["morf_score"][:, 0], want, rtol=1e-10, atol=1e-12)
    full = whybox.evaluate(model, x, a.unsqueeze(-1).expand(3, 5, 3), "road", target=0, noise=0.0, orders="morf",
                           fractions=(0.2,))  # fmt: skip
    torch.testing.assert_close(full.scores, r.scores)


def test_road_on_sequences_is_the_same_alone_and_in_a_batch() -> None:
    model, x = _gru()
    e = whybox.explain(model, x, "integrated_gradients", n_steps=8)
    batch = whybox.evaluate(model, x, e, "road", fractions=(0.3, 0.7), seed=2)
    for i in range(3):
        alone = whybox.evaluate(model, x[i : i + 1], e[i : i + 1], "road", fractions=(0.3, 0.7), seed=2)
        torch.testing.assert_close(alone.scores, batch.scores[i : i + 1], rtol=1e-12, atol=1e-12)


def test_the_curves_rank_an_mlps_gray_images_and_a_black_boxs_rows_by_their_pixels() -> None:
    """An MLP on gray images (B, H, W) and a black box's 3-D inputs are not sequences (is_sequence): deletion ranks
    their 64 pixels, as a per-pixel oracle does, not their 8 rows (a full map summed over the last axis)."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3)).double().eval()
    x = torch.randn(2, 8, 8, dtype=torch.float64)
    e = whybox.explain(mlp, x, "saliency")
    got = whybox.evaluate(mlp, x, e, "deletion", steps=64)
    assert got.meta["n_features"] == 64
    box = whybox.adapt(lambda z: mlp(z))
    assert whybox.evaluate(box, x, e, "deletion", steps=64).meta["n_features"] == 64
    want = []
    with torch.no_grad():
        for i in range(2):
            order = torch.argsort(-e.attributions[i].flatten(), stable=True)
            k = int(e.target[i])
            ys = []
            for n in range(65):
                z = x[i].flatten().clone()
                z[order[:n]] = 0
                ys.append(float(mlp(z.view(1, 8, 8)).softmax(1)[0, k]))
            want.append(sum((a + b) / 2 for a, b in itertools.pairwise(ys)) / 64)
    torch.testing.assert_close(got.scores, torch.tensor(want, dtype=got.scores.dtype), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["max_sensitivity", "random_logit", "randomization"])
def test_the_metrics_that_rerun_the_method_take_a_sequences_to_map(name: str) -> None:
    """A sequence's Explanation.to_map() (B, T), one value per step, is what the curves read; the metrics that re-run
    the method pool the new (B, T, D) maps alike (they refused it): the numbers of an explainer that gives the
    per-step sums itself."""
    model, x = _gru()
    e = whybox.explain(model, x, "saliency", abs=False)

    def per_step(m: nn.Module, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return whybox.explain(m, z, "saliency", target=t, abs=False).attributions.sum(-1)

    extra = {"n_samples": 3} if name == "max_sensitivity" else {}
    got = whybox.evaluate(
        model, x, e.to_map(), name, target=e.target, explainer="saliency", explainer_params={"abs": False}, seed=1,
        **extra,
    )  # fmt: skip
    want = whybox.evaluate(model, x, e.to_map(), name, target=e.target, explainer=per_step, seed=1, **extra)
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-10, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("name", ["relevance_mass", "pointing_game"])
def test_localisation_takes_a_sequences_to_map(name: str) -> None:
    model, x = _gru()
    masks = torch.zeros(3, 9, dtype=torch.bool)
    masks[:, 2:5] = True
    e = whybox.explain(model, x, "integrated_gradients", n_steps=8)
    full = whybox.evaluate(model, x, e, name, masks=masks)
    per_step = whybox.evaluate(model, x, e.to_map(), name, masks=masks, target=e.target)
    torch.testing.assert_close(per_step.scores, full.scores, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("name", ["deletion", "comprehensiveness", "sufficiency", "aopc", "mufidelity"])
@pytest.mark.parametrize("t", [6, 3])  # t == 3: as many steps as features, where (B, T) ids read along D before
def test_region_ids_per_time_step_of_a_sequence(name: str, t: int) -> None:
    """Region ids (B, T) of a sequence (B, T, D) are ids per time step, shared by the step's features: the scores of
    the same ids as (B, T, 1) (before, T != D was refused and T == D read them along the D features)."""
    model, x = _gru()
    x = x[:, :t]
    e = whybox.explain(model, x, "saliency")
    ids = torch.tensor([[0, 1, 1, 2, 2, 2][:t]] * 3)
    opts = {"n_samples": 8, "seed": 0} if name == "mufidelity" else {}
    if t == 3:  # as many steps as features: (B, T) ids could also be (B, D) ones, read per step with a warning
        from whybox.masking.features import AmbiguousIdsWarning

        with pytest.warns(AmbiguousIdsWarning):
            a = whybox.evaluate(model, x, e, name, regions=ids, **opts)
    else:
        a = whybox.evaluate(model, x, e, name, regions=ids, **opts)
    b = whybox.evaluate(model, x, e, name, regions=ids.unsqueeze(-1), **opts)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0, equal_nan=True)


def test_mufidelity_refuses_grid_size_where_there_is_no_image() -> None:
    model, x = _gru()
    e = whybox.explain(model, x, "saliency")
    with pytest.raises(whybox.errors.InvalidParameterError, match=r"grid_size=2 sets the grid cells of images"):
        whybox.evaluate(model, x, e, "mufidelity", grid_size=2, n_samples=8)


def test_the_guard_hooks_no_recurrent_layer_whose_weights_are_on_the_cpu() -> None:
    """The hooks that take CUDA gradients through an eval-mode recurrent layer are set only where cuDNN runs it: a
    CPU layer gets none during the call (they cost two Python calls per forward and showed the user's own forward
    hooks training=True), and none is left after a forward that raised. (The CUDA side: tests/contract/test_cuda.py.)"""
    seen: list[int] = []

    class Recording(GRUNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(len(self.rnn._forward_pre_hooks) + len(self.rnn._forward_hooks))
            return super().forward(x)

    class Raising(GRUNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            super().forward(x)
            raise RuntimeError("boom")

    whybox.explain(Recording().double().eval(), torch.randn(2, 5, 3, dtype=torch.float64), "saliency", target=0)
    assert seen and set(seen) == {0}
    model = Raising().double().eval()
    with pytest.raises(RuntimeError, match="boom"):
        whybox.explain(model, torch.randn(2, 5, 3, dtype=torch.float64), "saliency", target=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not model.rnn.training and model.rnn.dropout == 0.0


class PermutingCNN(nn.Module):
    """A 1-D CNN over a sequence (B, T, D): the steps permuted into the convolution's channels-first layout."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x.permute(0, 2, 1)).relu().amax(-1))


@pytest.mark.parametrize("t", [8, 4])
def test_a_cnn_that_permutes_a_sequence_is_read_as_one_also_when_t_equals_d(t: int) -> None:
    """T == D: the shapes cannot tell a signal (B, C, L) from a sequence (B, T, D); the convolution's input does. A
    permuting CNN's inputs are sequences for every T (they were signals at T == D: windows, maps and metrics ran
    along the features), a signal CNN's stay signals, and the probe changes nothing of the model."""
    from whybox.models.adapter import is_sequence, is_signal

    torch.manual_seed(0)
    model = PermutingCNN(4).train()
    x = torch.randn(2, t, 4)
    ad = whybox.adapt(model)
    assert is_sequence(ad, x) and not is_signal(ad, x)
    assert model.training and all(not m._forward_pre_hooks for m in model.modules())
    e = whybox.explain(model, x, "lima")
    assert e.attributions.shape == (2, t, 1) and e.to_map().shape == (2, t)
    signal_cnn = nn.Sequential(nn.Conv1d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool1d(1), nn.Flatten(),
                               nn.Linear(6, 3))  # fmt: skip
    sig = whybox.adapt(signal_cnn)
    assert is_signal(sig, torch.randn(2, 4, 4)) and not is_sequence(sig, torch.randn(2, 4, 4))


@pytest.mark.parametrize("method", ["saliency", "lime"])
def test_a_callable_target_returning_class_indices_is_refused(method: str) -> None:
    """target=lambda s: s.argmin(1) gives class indices, not a score: a gradient method crashed inside torch and LIME
    explained the index as if it were a score; both now say what a callable target returns."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    x = torch.randn(2, 3, 2, 2)
    with pytest.raises(whybox.errors.InvalidTargetError, match=r"returned torch.int64 values, which look like class"):
        whybox.explain(
            model, x, method, target=lambda s: s.argmin(1), **({"n_samples": 16} if method == "lime" else {})
        )
    whybox.explain(
        model, x, method, target=lambda s: s[:, 1] - s[:, 0], **({"n_samples": 16} if method == "lime" else {})
    )


def test_plot_names_label2id_given_as_labels() -> None:
    pytest.importorskip("matplotlib")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.rand(1, 3, 6, 6)
    e = whybox.explain(model, x, "saliency")
    with pytest.raises(whybox.errors.InvalidParameterError, match=r"config.label2id\?\). Pass id2label"):
        e.plot(x, labels={"negative": 0, "positive": 1})


def test_saving_a_meta_device_tensor_is_a_clear_error(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    e = whybox.explain(model, torch.randn(2, 3, 2, 2), "saliency")
    e.meta["shape_only"] = torch.empty(2, 3, device="meta")
    with pytest.raises(whybox.errors.InvalidParameterError, match=r"meta\['shape_only'\] is a tensor on the 'meta'"):
        e.save(tmp_path / "e.safetensors")


class NormThenPermute(PermutingCNN):
    def __init__(self, d: int) -> None:
        super().__init__(d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x))


def test_the_t_equals_d_probe_sees_through_per_step_layers_and_any_first_row() -> None:
    """A LayerNorm over D before the permute, a first row of zeros: still a sequence at T == D (the probe compared
    values before: both read as signals), the same answer whichever row comes first."""
    from whybox.models.adapter import is_sequence

    torch.manual_seed(0)
    x = torch.randn(3, 5, 5)
    x[0] = 0.0
    assert is_sequence(whybox.adapt(NormThenPermute(5).eval()), x)
    assert is_sequence(whybox.adapt(PermutingCNN(5).eval()), x)
    assert is_sequence(whybox.adapt(PermutingCNN(5).eval()), x.flip(0))


def test_the_t_equals_d_probe_is_safe_beside_another_threads_call() -> None:
    """The probe's hook is set under the model's lock: a thread explaining the model meanwhile never meets it (it
    raised the probe's exception in 39 of its calls), and the other thread's answers never vary."""
    import threading

    from whybox.models.adapter import _TRANSPOSED, is_signal

    torch.manual_seed(0)
    model = PermutingCNN(6).eval()
    errors: list[str] = []
    answers: set[bool] = set()
    stop = threading.Event()

    def explain() -> None:
        for _ in range(30):
            try:
                whybox.explain(model, torch.randn(2, 8, 6), "saliency")
            except Exception as exc:  # the test counts every failure
                errors.append(type(exc).__name__)
        stop.set()

    t = threading.Thread(target=explain)
    t.start()
    x6 = torch.randn(2, 6, 6)
    while not stop.is_set():
        _TRANSPOSED.pop(model, None)  # probe again every time
        answers.add(is_signal(whybox.adapt(model), x6))
    t.join(timeout=60)
    assert errors == [] and answers == {False}


def test_region_ids_per_element_of_a_square_sequence_still_broadcast() -> None:
    """(T, D) ids shared by the rows (the documented (*G) form) at T == D != B are per element, as before; (D,) at
    T == D is read per step with a warning naming (1, 1, D)."""
    from whybox.masking.features import AmbiguousIdsWarning

    model, x = _gru()
    x = x[:, :3]  # T = D = 3, B = 3: (T, D) ids look like (B, T) ones, so take B = 2
    x = x[:2]
    e = whybox.explain(model, x, "saliency")
    per_element = torch.arange(9).view(3, 3) % 2
    a = whybox.evaluate(model, x, e, "deletion", regions=per_element)
    b = whybox.evaluate(model, x, e, "deletion", regions=per_element.expand(2, 3, 3))
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
    with pytest.warns(AmbiguousIdsWarning, match=r"read one per time step; for ids per feature.*\(1, 1, 3\)"):
        c = whybox.evaluate(model, x, e, "deletion", regions=torch.tensor([0, 0, 1]))
    d = whybox.evaluate(model, x, e, "deletion", regions=torch.tensor([0, 0, 1]).view(1, 3, 1))
    torch.testing.assert_close(c.scores, d.scores, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["sparseness", "complexity"])
def test_map_only_metrics_take_per_step_region_ids_of_a_sequence_model(name: str) -> None:
    model, x = _gru()
    e = whybox.explain(model, x, "integrated_gradients", n_steps=8)
    steps = torch.arange(9) // 3
    a = whybox.evaluate(model, x, e, name, regions=steps)
    b = whybox.evaluate(model, x, e, name, regions=steps.view(1, 9, 1))
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)


def test_mufidelity_reruns_from_its_own_recorded_params_on_a_table() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 5)
    e = whybox.explain(model, x, "saliency")
    r = whybox.evaluate(model, x, e, "mufidelity", n_samples=8)
    again = whybox.evaluate(model, x, e, "mufidelity", **r.params)
    torch.testing.assert_close(again.scores, r.scores, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", ["randomization", "random_logit", "max_sensitivity"])
def test_metrics_rerun_a_seed_none_explanation_with_the_seed_it_drew(name: str) -> None:
    """An explanation made with seed=None records its drawn seed; the metrics that re-run its method use it, so
    their own seed decides their result (each re-run drew a fresh seed: two calls with seed=0 differed)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3)).eval()
    x = torch.rand(3, 1, 4, 4)
    e = whybox.explain(model, x, "lime", target=0, seed=None, n_samples=32)
    extra = {"n_samples": 2} if name == "max_sensitivity" else {}
    a = whybox.evaluate(model, x, e, name, seed=0, **extra)
    b = whybox.evaluate(model, x, e, name, seed=0, **extra)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("method", ["saliency", "lime"])
def test_as_is_dropout_is_decided_by_the_seed_not_the_global_generator(method: str) -> None:
    """mode='as_is' with Dropout in training mode: the model's draws come from the call's seed (another global seed
    before the call changed the result), and the global generator comes back as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
                              nn.Linear(64, 3)).train()  # fmt: skip
        x = torch.rand(2, 1, 4, 4)
        opts = {"target": 0, "seed": 0, "mode": "as_is", **({"n_samples": 16} if method == "lime" else {})}
        runs = []
        for global_seed in (1, 2):
            torch.manual_seed(global_seed)
            state = torch.get_rng_state()
            runs.append(whybox.explain(model, x, method, **opts).attributions)
            assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(runs[0], runs[1])


def test_a_callable_target_returning_complex_scores_is_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    with pytest.raises(whybox.errors.InvalidTargetError, match=r"one real score per row.*complex64"):
        whybox.explain(model, torch.randn(2, 3, 2, 2), "occlusion", target=lambda s: s[:, 0] + 1j * s[:, 1])


def test_saving_a_meta_device_tensor_nested_in_meta_is_a_clear_error(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    e = whybox.explain(model, torch.randn(2, 3, 2, 2), "saliency")
    e.meta["shapes"] = [torch.empty(2, device="meta")]
    with pytest.raises(whybox.errors.InvalidParameterError, match=r"meta holds a tensor on the 'meta' device"):
        e.save(tmp_path / "e.safetensors")


def test_the_t_equals_d_probe_answers_per_preprocess() -> None:
    """Two adapters of one model, one transposing its inputs first: each gets its own answer (the first one probed
    decided for both)."""
    from whybox.models.adapter import is_sequence

    model = PermutingCNN(5).eval()
    x = torch.randn(2, 5, 5)
    plain = whybox.adapt(model)
    flipped = whybox.adapt(model, preprocess=lambda t: t.transpose(1, 2))
    assert is_sequence(plain, x) and not is_sequence(flipped, x)
    assert not is_sequence(whybox.adapt(model, preprocess=lambda t: t.transpose(1, 2)), x)


def test_per_row_ids_of_a_square_sequence_warn_of_their_two_readings() -> None:
    from whybox.masking.features import AmbiguousIdsWarning

    model, x = _gru()
    x = x[:, :3]
    e = whybox.explain(model, x, "saliency")
    with pytest.warns(AmbiguousIdsWarning, match=r"\(3, 1, 3\) \(one per row\)"):
        whybox.evaluate(model, x, e, "deletion", regions=torch.tensor([[0, 0, 1]] * 3))


def test_the_t_equals_d_probe_takes_unhashable_preprocesses_and_keeps_no_model_alive() -> None:
    """A preprocess object without __hash__ crashed the probe's memo, and a preprocess bound to the model (its own
    norm layer) kept the model alive in the module-level memo: the answer now lives on that adapter."""
    import gc
    import weakref

    class Scale:
        def __eq__(self, other: object) -> bool:
            return isinstance(other, Scale)

        def __call__(self, t: torch.Tensor) -> torch.Tensor:
            return t * 2

    from whybox.models.adapter import is_sequence

    model = NormThenPermute(5).eval()
    x = torch.randn(2, 5, 5)
    assert is_sequence(whybox.adapt(model, preprocess=Scale()), x)
    assert is_sequence(whybox.adapt(model, preprocess=model.norm), x)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_lima_paints_a_label_map_shared_along_time_over_the_whole_input() -> None:
    """Feature groups (1, 1, D) of a sequence, channel groups (1, C, 1) of a signal: LIMA painted them at the map's
    own shape ((B, 1, D), (B, C, 1)), which deletion refused and to_map read as (B, 1); now over every step."""
    model, x = _gru()
    groups = torch.tensor([0, 0, 1]).view(1, 1, 3)
    e = whybox.explain(model, x, "lima", regions=groups, search="naive")
    assert e.attributions.shape == x.shape and e.to_map().shape == (3, 9)
    assert torch.equal(e.attributions, e.attributions[:, :1].expand_as(e.attributions))
    whybox.evaluate(model, x, e, "deletion")
    torch.manual_seed(0)
    sig = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                        nn.Linear(4, 3)).double().eval()  # fmt: skip
    s = torch.randn(2, 2, 12, dtype=torch.float64)
    es = whybox.explain(sig, s, "lima", regions=torch.tensor([0, 1]).view(1, 2, 1), search="naive")
    assert es.attributions.shape == s.shape
    whybox.evaluate(sig, s, es, "deletion")


def test_lima_reads_region_ids_per_time_step_of_a_sequence_as_the_metrics_do() -> None:
    """(B, T) ids were refused at T != D (and read along the features at T == D); they are one id per step, the
    explanation of the same ids as (B, T, 1)."""
    model, x = _gru()
    ids = (torch.arange(9) // 3).expand(3, 9)
    a = whybox.explain(model, x, "lima", regions=ids, search="naive")
    b = whybox.explain(model, x, "lima", regions=ids.unsqueeze(-1), search="naive")
    torch.testing.assert_close(a.attributions, b.attributions, rtol=0, atol=0)


def test_lima_spans_on_a_texts_tokens(make_text_classifier: Any) -> None:
    """regions='spans' (LIMA.md: token spans) refused every text model, whose packed rows are (B, T, ...); the spans
    are the same regions as a (T, 1) label map."""
    clf = make_text_classifier()
    texts = ["not a good film but very fun"]
    t = clf.encode(texts).inputs.shape[1]
    spans = whybox.explain_text(clf, texts, "lima", regions="spans", groups=[(0, 4), (4, t)], search="naive")
    label_map = whybox.explain_text(clf, texts, "lima", regions=torch.tensor([0] * 4 + [1] * (t - 4)).view(t, 1),
                                    search="naive")  # fmt: skip
    assert spans.words == label_map.words


def test_lima_names_the_time_kinds_when_an_image_kind_is_asked_of_a_sequence() -> None:
    model, x = _gru()
    with pytest.raises(whybox.errors.InvalidInputError, match=r"Use regions='segments' \(windows along time"):
        whybox.explain(model, x, "lima", regions="superpixels")


def test_lima_spreads_a_shared_label_map_over_space_only_not_over_the_channels() -> None:
    """A (1, 1, 1, W) map of column regions gives what the same regions as an (H, W) map give, (B, 1, H, W): the
    first cut of the spreading painted it over the channels too (to_map 3 times larger)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).double().eval()  # fmt: skip
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    cols = torch.tensor([0, 0, 1, 1, 2, 2])
    a = whybox.explain(model, x, "lima", regions=cols.view(1, 1, 1, 6), search="naive")
    b = whybox.explain(model, x, "lima", regions=cols.expand(6, 6), search="naive")
    assert a.attributions.shape == b.attributions.shape == (2, 1, 6, 6)
    torch.testing.assert_close(a.attributions, b.attributions, rtol=0, atol=0)


def test_find_mistakes_refuses_an_image_label_map_of_channel_groups_with_a_clear_error() -> None:
    """(1, C, 1, 1) channel groups: LIMA takes them, but the insertion steps of find_mistakes go over pixels; it
    failed with torch's reshape error."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(16, 3)).eval()  # fmt: skip
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        labels = (cnn(x).argmax(-1) + 1) % 3
    with pytest.raises(whybox.errors.InvalidParameterError, match=r"\(1, 3, 1, 1\) do not fit inputs \(2, 3, 8, 8\)"):
        whybox.find_mistakes(cnn, x, labels, regions=torch.arange(3).reshape(1, 3, 1, 1))


def test_find_mistakes_names_the_users_own_inputs_when_a_label_map_does_not_fit() -> None:
    """A (4, 8) map on 12 images of 8 x 8 was checked against the 8 mistakes' rows, and the error's advice ((8, 8, 8))
    was then refused; the error names the user's inputs and the shapes that fit them."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Linear(16, 3)).eval()  # fmt: skip
    x = torch.rand(12, 1, 8, 8)
    with torch.no_grad():
        labels = (cnn(x).argmax(-1) + 1) % 3  # every row wrong
    with pytest.raises(
        whybox.errors.InvalidParameterError, match=r"inputs \(12, 1, 8, 8\).*one per input, \(12, 8, 8\)"
    ):
        whybox.find_mistakes(cnn, x, labels, method="occlusion", regions=torch.zeros(4, 8, dtype=torch.long))
    report = whybox.find_mistakes(cnn, x, labels, method="occlusion", regions=torch.zeros(12, 8, 8, dtype=torch.long))
    assert report.n_wrong == 12
    with pytest.raises(whybox.errors.InvalidParameterError, match=r"each input's label map must be \(8, 8\)"):
        whybox.find_mistakes(cnn, x, labels, method="occlusion", regions=torch.zeros(12, 4, 4, dtype=torch.long))


def test_roar_names_an_empty_split() -> None:
    from whybox.metrics.roar import roar

    x = torch.rand(4, 1, 4, 4)
    y = torch.arange(4) % 2
    with pytest.raises(whybox.errors.InvalidInputError, match=r"x_test holds no images"):
        roar(["saliency"], data=(x, y, x[:0], y[:0]), model_fn=lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 2)),
             explain_model=nn.Sequential(nn.Flatten(), nn.Linear(16, 2)))  # fmt: skip


@pytest.mark.parametrize("bad", [0, 1, -3, "64", None])
def test_adapt_text_checks_max_length(bad: Any, make_text_classifier: Any) -> None:
    """max_length 0 or 1 turned truncation off silently (an 82-token text then crashed inside the model), -3, '64'
    and None raised raw Python errors."""
    clf = make_text_classifier()
    with pytest.raises(whybox.errors.InvalidParameterError, match=r"max_length"):
        whybox.adapt_text(clf.model, clf.tokenizer, max_length=bad)


@pytest.mark.parametrize("option", [{"references": "a sad story"}, {"pooling": "cls"}, {"pooling": "bogus"}])
def test_adapt_text_refuses_encoder_options_for_a_classifier(option: dict[str, Any], make_text_classifier: Any) -> None:
    clf = make_text_classifier()
    with pytest.raises(whybox.errors.InvalidParameterError, match=r"apply to kind='embedding'"):
        whybox.adapt_text(clf.model, clf.tokenizer, **option)


def test_a_black_box_text_model_names_the_empty_text() -> None:
    from whybox.models.blackbox_text import BlackBoxTextAdapter

    box = BlackBoxTextAdapter(lambda texts: torch.rand(len(texts), 2))
    with pytest.raises(whybox.errors.InvalidInputError, match=r"texts\[2\] is ''"):
        box.encode(["good movie", "great", ""])
