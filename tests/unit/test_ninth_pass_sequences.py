"""Ninth pass: how whybox tells 3-D sequences (B, T, D) from 1-D signals (B, C, L), and variable-length inputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import whybox
from whybox.errors import AmbiguousLayoutWarning, InvalidInputError
from whybox.models.adapter import is_sequence, is_signal


class ProjectedConv(nn.Module):
    """A sequence model (B, T, D): a per-step projection Linear(D, H), the permute, then Conv1d(H)."""

    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, h)
        self.conv = nn.Conv1d(h, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.proj(x).transpose(1, 2)).relu().mean(-1))


class PermutedConv(nn.Module):
    """A 1-D CNN over sequences (B, T, D): the permute, then Conv1d(D)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x.transpose(1, 2)).relu().mean(-1))


def _signal_cnn(c: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(c, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 2)
    )


@pytest.mark.parametrize("method", ["lime", "occlusion", "kernel_shap"])
def test_a_projected_sequence_reads_the_same_whether_or_not_its_width_equals_t(method: str) -> None:
    """Linear(D, H) then the permute and Conv1d(H): with H == T the conv's channel count matched x.shape[1] and the
    sequences were read as signals (maps (B, 1, D), windows cut along D); the probe now sees axis 1 reach the conv's
    time axis, so H == T reads as H != T does: not a signal, the same map shape and the same numbers as the model
    with the projection's width changed but nothing else."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3)
    wide, narrow = ProjectedConv(3, 8).eval(), ProjectedConv(3, 5).eval()
    assert not is_signal(whybox.adapt(wide), x)
    assert is_signal(whybox.adapt(wide), x) == is_signal(whybox.adapt(narrow), x)
    opts = {"n_samples": 64, "seed": 0} if method != "occlusion" else {}
    a = whybox.explain(wide, x, method, **opts)
    b = whybox.explain(narrow, x, method, **opts)
    assert "signal" not in a.meta and a.attributions.shape == b.attributions.shape
    if method == "occlusion":  # features and windows the same: each one's score change is the model's own
        assert a.meta["occlusion"] == b.meta["occlusion"]


def test_gradcam_on_a_projected_sequence_is_refused_as_for_any_width() -> None:
    """Grad-CAM stretched 8 conv positions (time) onto 3 features when H == T; it is now refused as at H != T."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 3)
    for h in (8, 5):
        with pytest.raises(InvalidInputError):
            whybox.explain(ProjectedConv(3, h).eval(), x, "gradcam")


@pytest.mark.parametrize("shape", [(2, 8, 3), (2, 4, 4), (2, 1, 6)])
def test_genuine_signal_models_still_read_as_signals_without_a_warning(shape: tuple[int, int, int]) -> None:
    """The probe now runs wherever the first Conv1d reads x.shape[1] channels; a 1-D CNN on signals (B, C, L) still
    reads as one (the probe sees axis 1 reach its channels), with no warning, also behind a per-time-step op."""
    torch.manual_seed(0)
    x = torch.randn(*shape)
    plain = _signal_cnn(shape[1]).eval()
    scaled = nn.Sequential(nn.Linear(shape[2], shape[2]), _signal_cnn(shape[1])).eval()  # a Linear along L
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousLayoutWarning)
        for model in (plain, scaled):
            assert is_signal(whybox.adapt(model), x)
            e = whybox.explain(model, x, "occlusion")
            assert e.meta.get("signal") is True


def test_a_traced_square_sequence_model_warns_that_it_is_read_as_a_signal() -> None:
    """The same 1-D CNN over (B, T, D) at T == D: eager it reads as a sequence, traced the probe cannot look inside
    and it fell back to a signal silently; it still reads as a signal (the shapes fit both), now with an
    AmbiguousLayoutWarning naming the shape and the ways to say otherwise, once per model and shape."""
    torch.manual_seed(0)
    model = PermutedConv(4).eval()
    x = torch.randn(2, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace is deprecated, still common in use
        traced, again = torch.jit.trace(model, x), torch.jit.trace(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousLayoutWarning)
        assert is_sequence(whybox.adapt(model), x) and not is_signal(whybox.adapt(model), x)
    adapter = whybox.adapt(traced)
    with pytest.warns(
        AmbiguousLayoutWarning,
        match=r"inputs of shape \(2, 4, 4\) for \w+, whose first Conv1d reads 4 channels, are read as 1-D signals "
        r"\(B, C, L\).*cannot look inside a TorchScript model.*adapt the module itself \(not a scripted or traced "
        r"one\) so that whybox sees the permute\. Where the inputs are signals",
    ) as rec:
        assert is_signal(adapter, x)
    # a transposing preprocess leaves a traced model as much out of sight: no advice that cannot work
    assert "transpose" not in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousLayoutWarning)
        assert is_signal(adapter, x)  # remembered: said once per model and shape
    with pytest.warns(AmbiguousLayoutWarning):  # so does explain, on another traced copy
        e = whybox.explain(again, x, "lime", n_samples=16, seed=0)
    assert e.meta.get("signal") is True


def test_the_suggested_transposed_signals_read_as_signals_of_the_model() -> None:
    """The warning's way out: x.transpose(1, 2) with a transposing preprocess is the signal (B, D, T) the model's
    conv sees; the eager model then reads as a signal with no warning, its per-time-step feature ablation the
    sequence's per-step one, transposed."""
    torch.manual_seed(0)
    model = PermutedConv(4).eval()
    x = torch.randn(2, 4, 4)
    adapter = whybox.adapt(model, preprocess=lambda z: z.transpose(1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousLayoutWarning)
        assert is_signal(adapter, x.transpose(1, 2))
        sig = whybox.explain(adapter, x.transpose(1, 2).contiguous(), "feature_ablation", features="segments", patch=1)
    seq = whybox.explain(model, x, "feature_ablation", features=torch.arange(4).view(1, 4, 1))
    assert sig.meta.get("signal") is True
    torch.testing.assert_close(sig.attributions, seq.attributions.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_nested_tensor_inputs_are_an_error_naming_inputs_and_the_padding() -> None:
    torch.manual_seed(0)

    class GRUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.fc = nn.GRU(3, 8, batch_first=True), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.rnn(x)[1][-1])

    net = GRUNet().eval()
    samples = [torch.randn(5, 3), torch.randn(7, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: the strided layout is a prototype
        nested = torch.nested.nested_tensor(samples)
    jagged = torch.nested.nested_tensor(samples, layout=torch.jagged)
    msg = r"inputs is a nested tensor of 2 samples .*pad them to \(B, T, D\), e\.g\. torch\.nested\.to_padded_tensor"
    for given in (nested, jagged):
        with pytest.raises(InvalidInputError, match=msg):
            whybox.explain(net, given, "occlusion")
        with pytest.raises(InvalidInputError, match=msg):
            whybox.evaluate(net, given, torch.zeros(2, 7, 3), "deletion")
    # the two paddings the messages name give the same rows, and those explain
    padded = torch.nested.to_padded_tensor(nested, 0.0)
    torch.testing.assert_close(padded, nn.utils.rnn.pad_sequence(samples, batch_first=True), rtol=0, atol=0)
    assert whybox.explain(net, padded, "saliency").attributions.shape == (2, 7, 3)


@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_a_packed_sequence_is_told_to_pad_not_to_convert(enforce_sorted: bool) -> None:
    """A PackedSequence was told to convert with torch.as_tensor (which fails on it) or, unsorted, to adapt a model
    of several inputs: both now name pad_packed_sequence."""
    seqs = [torch.randn(7, 3), torch.randn(5, 3)]
    packed = nn.utils.rnn.pack_sequence(seqs, enforce_sorted=enforce_sorted)
    model = nn.Sequential(nn.Flatten(), nn.Linear(21, 2)).eval()
    msg = r"inputs is a PackedSequence; .*torch\.nn\.utils\.rnn\.pad_packed_sequence\(inputs, batch_first=True\)"
    with pytest.raises(InvalidInputError, match=msg):
        whybox.explain(model, packed, "saliency")
    with pytest.raises(InvalidInputError, match=msg):
        whybox.evaluate(model, packed, torch.zeros(2, 7, 3), "deletion")


def test_a_list_of_unequal_samples_is_told_to_pad_them() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(21, 2)).eval()
    with pytest.raises(
        InvalidInputError,
        match=r"input_shapes=.*if these are its samples, of different lengths \(\(5, 3\), \(7, 3\): variable-length "
        r"sequences\), pad them into one \(B, T, D\) with torch\.nn\.utils\.rnn\.pad_sequence\(inputs, batch_first=True\)",
    ):
        whybox.explain(model, [torch.randn(5, 3), torch.randn(7, 3)], "saliency")
    with pytest.raises(InvalidInputError) as info:  # a model's several inputs (different ranks): no such hint
        whybox.explain(model, [torch.randn(2, 3, 4, 4), torch.randn(2, 10)], "saliency")
    assert "pad_sequence" not in str(info.value)


class NormThenConv(nn.Module):
    """A signal model whose first op mixes every channel and time position (GroupNorm(1, C)), then Conv1d(C)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, c)
        self.conv = nn.Conv1d(c, 2, 1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(self.norm(x)).mean(2))


def test_a_signal_of_one_time_step_stays_a_signal() -> None:
    """At L == 1, "only the first time position changed" holds whatever the layout: no reading from it (a review
    found (4, 3, 1) signals behind a GroupNorm read as sequences). The probe cannot tell, so the shapes decide."""
    torch.manual_seed(0)
    model = NormThenConv(3).eval()
    x = torch.randn(4, 3, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AmbiguousLayoutWarning)  # (B, 3, 1) is no square: nothing to warn of
        assert is_signal(whybox.adapt(model), x)
