"""Models spread over devices (``load_model(..., device_map=...)``, Hugging Face accelerate).

On the CPU the test maps offload layers to disk (weights written under a tmp folder, loaded
by accelerate's hooks for each call): the full forward, cached activations, the layer runner
(:func:`~headprobe.runtime.layers.run_from_layer`, :func:`~headprobe.runtime.layers.record_kv`),
every intervention method, the head means of the streaming pass, KV-cached generation and
the fast scans (:func:`~headprobe.fastscan.scan_heads`,
:func:`~headprobe.fastscan.effects.head_effects`) must equal the plain single-device model
(1e-5). Bad maps raise clear errors.

With CUDA (``@pytest.mark.gpu``) a map splits the layers between ``cuda:0`` and ``cpu``, run
two ways: ``device="cpu"`` (the ``"cpu"`` layer really runs on the CPU, so activations cross
devices between layers) and the default main device ``cuda:0`` (accelerate's CPU offload: the
``"cpu"`` layer's weights live in CPU memory and run on the GPU); both are compared with the
same weights on ``cuda:0`` alone and on the CPU alone.
"""

from __future__ import annotations

import sys

import pytest
import torch

from headprobe.catalogue import load_model
from headprobe.errors import ModelUnavailableError, UnknownModelError
from headprobe.fastscan import scan_heads
from headprobe.fastscan.effects import head_effects
from headprobe.inputs import iter_batches, tokenize_prompts
from headprobe.interventions import intervene
from headprobe.interventions.means import compute_head_means
from headprobe.models import describe_model
from headprobe.runtime.decode import generate
from headprobe.runtime.forward import forward_batch
from headprobe.runtime.hooks import capture, model_device
from headprobe.runtime.layers import embed, record_kv, run_from_layer
from headprobe.tasks.base import TaskItem
from headprobe.tiny import tiny_model

TOL = 1e-5
GPU_TOL = 1e-3  # fp32 on the GPU against fp32 on the CPU (tests/test_gpu.py's FP32_TOL)

PROMPTS = ["ab cd ab cd", "the cat sat on the mat", "hello there", "pq rs pq rs pq"]
ITEMS = [
    TaskItem("ab cd ab", "c", "x", "ab xd ab"),
    TaskItem("pq rs pq", "r", "x", "pq xs pq"),
    TaskItem("hello", "l", "o", "jello"),  # shorter: padding
    TaskItem("mn op m", "n", "x", "mx op m"),
]
SCAN_METHODS = ("patch", "zero", "mean", "scale_output", "uniform_attention")
HEADS = [(0, 1), (1, 2), (2, 0)]  # one head in every layer: each crosses a device boundary

# The tiny models' HF module paths (3 decoder layers); Gemma 3 ties lm_head to the embedding.
DISK_MAP = {"model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk",
            "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "disk"}
# layer 1 (and the final norm) on the CPU, the rest on the GPU
SPLIT_MAP = {"model.embed_tokens": "cuda:0", "model.layers.0": "cuda:0",
             "model.layers.1": "cpu", "model.layers.2": "cuda:0", "model.norm": "cpu",
             "lm_head": "cuda:0"}


def offloaded(kind: str, folder, **options):
    """The tiny model of ``kind`` with :data:`DISK_MAP` (weights under ``folder``)."""
    return tiny_model(kind, device_map=DISK_MAP, offload_folder=folder, **options)


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    """(plain, offloaded) tiny llama-gqa: the same weights, on the CPU and over CPU + disk."""
    return tiny_model("llama-gqa")[0], offloaded("llama-gqa", tmp_path_factory.mktemp("off"))[0]


@pytest.fixture(scope="module")
def gemma_pair(tmp_path_factory):
    return tiny_model("gemma3")[0], offloaded("gemma3", tmp_path_factory.mktemp("off"))[0]


# --- shared checks (CPU + disk here, cuda:0 + cpu in the GPU test) ------------------------------


def _close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    diff = float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())
    assert diff <= tol, f"{what}: max |difference| {diff:.3g} > {tol}"


def _batch(model):
    spec = describe_model(model)
    ids = tokenize_prompts(model, PROMPTS, spec)
    return next(iter(iter_batches(ids, len(ids), pad_token_id=spec.pad_token_id,
                                  device=model_device(model))))


def _hook_names(model) -> list[str]:
    spec = describe_model(model)
    return [spec.hooks.at(kind, layer) for layer in range(spec.n_layers)
            for kind in ("resid_pre", "q", "pattern", "z", "resid_post")]


def check_forward_and_cache(plain, mapped, tol: float) -> dict[str, torch.Tensor]:
    """Logits and every captured activation equal; returns the mapped model's capture."""
    names = _hook_names(plain)
    with torch.inference_mode():
        with capture(plain, names) as seen_plain:
            logits_plain = forward_batch(plain, _batch(plain))
        with capture(mapped, names) as seen_mapped:
            logits_mapped = forward_batch(mapped, _batch(mapped))
    assert logits_mapped.device == model_device(mapped)  # back on the main device
    _close(logits_plain, logits_mapped, tol, "logits")
    assert set(seen_mapped) == set(names)  # every hook fired, on every device
    for name in names:
        _close(seen_plain[name], seen_mapped[name], tol, name)
    return seen_mapped


def check_runner(plain, mapped, tol: float) -> None:
    """The layer runner from every layer, from the embeddings and with a recorded prefix."""
    spec = describe_model(plain)
    batch_plain, batch_mapped = _batch(plain), _batch(mapped)
    names = [spec.hooks.at("resid_pre", layer) for layer in range(spec.n_layers)]
    real = batch_plain.attention_mask.bool().cpu()[..., None]  # pads' logits: not compared
    with torch.inference_mode():
        full = forward_batch(plain, batch_plain).cpu() * real
        with capture(mapped, names) as resid_mapped:
            forward_batch(mapped, batch_mapped)
        for layer, name in enumerate(names):
            out = run_from_layer(mapped, resid_mapped[name], layer,
                                 batch_mapped.attention_mask, batch_mapped.position_ids)
            assert out.device == model_device(mapped)
            _close(full, out.cpu() * real, tol, f"run_from_layer({layer})")
        out = run_from_layer(mapped, embed(mapped, batch_mapped.tokens), 0,
                             batch_mapped.attention_mask, batch_mapped.position_ids)
        _close(full, out.cpu() * real, tol, "run_from_layer(embed)")
        width = 3  # every prompt has >= 3 real tokens: a prefix of real positions
        prefix_plain = record_kv(plain, embed(plain, batch_plain.tokens[:, :width]))
        prefix_mapped = record_kv(mapped, embed(mapped, batch_mapped.tokens[:, :width]))
        for layer in range(spec.n_layers):
            _close(prefix_plain.keys[layer], prefix_mapped.keys[layer], tol, f"keys {layer}")
            _close(prefix_plain.values[layer], prefix_mapped.values[layer], tol,
                   f"values {layer}")
        out = run_from_layer(mapped, resid_mapped[names[1]][:, width:], 1,
                             batch_mapped.attention_mask, batch_mapped.position_ids,
                             prefix=prefix_mapped)
        _close(full[:, width:], out.cpu() * real[:, width:], tol, "run_from_layer with a prefix")


def _intervention_options(model) -> list[tuple[str, list, dict]]:
    spec = describe_model(model)
    generator = torch.Generator().manual_seed(0)
    width = max(len(ids) for ids in tokenize_prompts(model, PROMPTS, spec))
    return [
        ("zero", HEADS, {}),
        ("mean", HEADS, {"reference": PROMPTS}),
        ("resample", HEADS, {"sources": PROMPTS, "seed": 3}),
        ("uniform_attention", HEADS, {}),
        ("scale_output", HEADS, {"factor": 0.1}),
        ("scale_value", HEADS, {"alpha": 3.0}),
        ("add_to_output", HEADS, {"vector": torch.randn(spec.d_model, generator=generator),
                                  "space": "residual", "coefficient": 4.0,
                                  "positions": [1, 2]}),
        ("set_pattern", HEADS, {"pattern": torch.rand(width, width, generator=generator)}),
        ("redistribute_sink", HEADS, {"beta": 0.2}),
        ("streaming_attention", [(1, 0), (2, spec.n_kv_heads - 1)], {"sink": 1, "window": 2}),
    ]


def check_interventions(plain, mapped, tol: float) -> None:
    """Every intervention method (heads in every layer) changes both models' logits alike."""
    with torch.inference_mode():
        base = forward_batch(plain, _batch(plain))
    for method, heads, options in _intervention_options(plain):
        with torch.inference_mode():
            with intervene(plain, heads, method, **options):
                expected = forward_batch(plain, _batch(plain))
            with intervene(mapped, heads, method, **options):
                got = forward_batch(mapped, _batch(mapped))
        assert float((expected - base).abs().max()) > 1e-4, f"{method} changed nothing"
        _close(expected, got, tol, f"intervention {method}")


def check_scans(plain, mapped, tol: float, methods=SCAN_METHODS) -> None:
    """The fast scans' HeadTables and head effects equal."""
    for method in methods:
        expected = scan_heads(plain, ITEMS, method=method, batch_size=3, progress=False)
        got = scan_heads(mapped, ITEMS, method=method, batch_size=3, progress=False)
        assert float(expected["score"].abs().max()) > 1e-3  # the scan measures something
        diff = float((expected["score"] - got["score"]).abs().max())
        assert diff <= tol, f"scan_heads({method}): {diff:.3g}"
    spec = describe_model(plain)
    ids = tokenize_prompts(plain, PROMPTS, spec)
    for method in ("uniform_attention", "scale_output"):
        expected = head_effects(plain, ids, method=method, batch_size=2, progress=False)
        got = head_effects(mapped, ids, method=method, batch_size=2, progress=False)
        _close(expected, got, tol, f"head_effects({method})")


# --- CPU + disk ----------------------------------------------------------------------------------


def test_disk_map_is_applied_and_recorded(llama_pair, tmp_path):
    model, spec = offloaded("llama-gqa", tmp_path)
    assert dict(spec.device_map) == {**DISK_MAP, "model.rotary_emb": "cpu"}  # rotary: main
    assert spec.device == "cpu" and str(model_device(model)) == "cpu"
    assert spec.to_dict()["device_map"]["model.layers.1"] == "disk"
    assert "device_map" not in describe_model(llama_pair[0]).to_dict()  # plain: no new key
    devices = {name: param.device.type for name, param in model.original_model.named_parameters()}
    assert devices["model.layers.1._original_component.mlp._original_component.up_proj."
                   "_original_component.weight"] == "meta"  # offloaded: loaded per call
    assert devices["model.layers.0._original_component.mlp._original_component.up_proj."
                   "_original_component.weight"] == "cpu"
    (folder,) = tmp_path.glob("headprobe-offload-*")
    assert (folder / "index.json").is_file()


def test_coarse_map_is_split_for_the_layer_runner(llama_pair, tmp_path):
    """An entry holding the decoder (``model``) is split into its children: the layer runner
    calls each layer, the norm and the embedding directly, and each needs its own hook."""
    coarse, spec = tiny_model("llama-gqa", device_map={"model": "disk", "lm_head": "cpu"},
                              offload_folder=tmp_path)
    placed = dict(spec.device_map)
    assert "model" not in placed
    assert {placed[f"model.layers.{i}"] for i in range(3)} == {"disk"}
    assert placed["model.embed_tokens"] == placed["model.norm"] == "disk"
    check_runner(llama_pair[0], coarse, TOL)


def test_forward_and_cached_activations_equal(llama_pair):
    check_forward_and_cache(*llama_pair, TOL)


def test_layer_runner_equal(llama_pair):
    check_runner(*llama_pair, TOL)


def test_interventions_equal(llama_pair):
    check_interventions(*llama_pair, TOL)


def test_streamed_head_means_equal(llama_pair):
    plain, mapped = llama_pair
    heads = [(layer, head) for layer, head in HEADS]
    expected = compute_head_means(plain, heads, PROMPTS, batch_size=3)
    got = compute_head_means(mapped, heads, PROMPTS, batch_size=3)
    for head in heads:
        _close(expected[head].per_position, got[head].per_position, TOL, f"mean {head}")


def test_generation_equal(llama_pair):
    plain, mapped = llama_pair
    spec = describe_model(plain)
    ids = tokenize_prompts(plain, PROMPTS[:2], spec)
    expected = generate(plain, ids, max_new_tokens=4)
    got = generate(mapped, ids, max_new_tokens=4)
    assert got.texts == expected.texts


@pytest.mark.parametrize("method", SCAN_METHODS)
def test_scan_heads_equal(llama_pair, method):
    check_scans(*llama_pair, TOL, methods=(method,))


def test_gemma3_offloaded(gemma_pair):
    """Gemma 3: q/k and sandwich norms, a scaled embedding and lm_head tied to it (both on
    disk)."""
    check_forward_and_cache(*gemma_pair, TOL)
    check_scans(*gemma_pair, TOL, methods=("patch", "uniform_attention"))


@pytest.mark.parametrize("pair", ["llama_pair", "gemma_pair"])
@pytest.mark.parametrize("name", ["dla", "successor", "sink"])
def test_weight_reading_scorers_equal(name, pair, request):
    """Scorers that read weights outside a forward pass (W_O per head, the unembedding, the
    norms, layer 0's MLP) load what the map offloaded and give the plain model's scores."""
    from headprobe.registry import get_scorer
    from headprobe.tasks.base import Task, TaskItem

    plain, spread = request.getfixturevalue(pair)
    items = [TaskItem("ab cd ab", "c", "x"), TaskItem("pq rs pq", "r", "x")]
    prompts, options = (Task("pairs", items), {}) if name == "dla" else (None, {"n": 2})
    expected = get_scorer(name)(plain, prompts, progress=False, **options)
    got = get_scorer(name)(spread, prompts, progress=False, **options)
    diff = float((expected["score"] - got["score"]).abs().max())
    assert diff <= 1e-6, f"{name}: {diff}"
    assert expected["score"].abs().max() > 0
    assert got.meta["model_spec"]["device_map"]
    # nothing stays loaded after the read: the offloaded weights are placeholders again
    layer = dict(spread.original_model.named_modules())["model.layers.1"]
    assert {p.device.type for p in layer.parameters()} == {"meta"}


def test_string_maps(llama_pair, tmp_path):
    plain = llama_pair[0]
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    with torch.inference_mode():
        expected = plain(ids)
    model, spec = load_model("tiny:llama-gqa", device_map="auto", device="cpu",
                             max_memory={"cpu": 10**9})  # the CPU alone, also beside a GPU
    assert spec.device_map == (("", "cpu"),)  # all of it fits on the CPU
    # a small CPU budget: accelerate sends the rest to disk
    tight, tight_spec = load_model("tiny:llama-gqa", device_map="sequential",
                                   max_memory={"cpu": 200_000}, offload_folder=tmp_path)
    assert "disk" in dict(tight_spec.device_map).values()
    with torch.inference_mode():
        _close(expected, model(ids), TOL, "auto")
        _close(expected, tight(ids), TOL, "sequential with a budget")


def test_hand_booted_bridge_is_described(tmp_path):
    """describe_model of a bridge booted around a dispatched model reads its map."""
    import accelerate
    from transformer_lens.model_bridge import TransformerBridge

    from headprobe.tiny import tiny_hf_model

    hf_model, tokenizer, _ = tiny_hf_model("llama-gqa")
    accelerate.dispatch_model(hf_model, {"model": "cpu", "lm_head": "disk"},
                              offload_dir=str(tmp_path))
    bridge = TransformerBridge.boot_transformers("tiny", hf_model=hf_model, tokenizer=tokenizer)
    spec = describe_model(bridge)
    assert dict(spec.device_map) == {"model": "cpu", "lm_head": "disk"}
    assert spec.device == "cpu"


def test_model_dispatched_by_the_caller_keeps_its_placement(llama_pair, tmp_path):
    """wrap_hf_model of a model spread by accelerate beforehand (as from_pretrained(...,
    device_map=) does, for models larger than the CPU's memory) keeps and records its map."""
    import accelerate

    from headprobe.models import wrap_hf_model
    from headprobe.tiny import tiny_hf_model

    hf_model, tokenizer, _ = tiny_hf_model("llama-gqa")
    accelerate.dispatch_model(hf_model, DISK_MAP, offload_dir=str(tmp_path))
    with pytest.raises(UnknownModelError, match="cannot be cast"):
        wrap_hf_model(hf_model, tokenizer, name="tiny", dtype="bfloat16")
    model, spec = wrap_hf_model(hf_model, tokenizer, name="tiny")
    assert dict(spec.device_map) == DISK_MAP and spec.device == "cpu"
    check_forward_and_cache(llama_pair[0], model, TOL)


@pytest.mark.parametrize("device_map,options,error,words", [
    ({**DISK_MAP, "model.layer.7": "cpu"}, {}, UnknownModelError, "does not have"),
    ({k: v for k, v in DISK_MAP.items() if k != "lm_head"}, {}, UnknownModelError,
     "lm_head.weight"),
    ({**DISK_MAP, "model": "cpu"}, {}, UnknownModelError, "inside it"),
    ({**DISK_MAP, "lm_head": "meta"}, {}, UnknownModelError, "'meta'"),
    ({**DISK_MAP, "lm_head": "gpu"}, {}, UnknownModelError, "not a device"),
    (DISK_MAP, {"offload_folder": None}, UnknownModelError, "offload_folder"),
    ("everywhere", {}, UnknownModelError, "auto"),
    (["cpu"], {}, UnknownModelError, "dict"),
    ({"": "cpu"}, {"max_memory": {"cpu": 10**9}}, UnknownModelError, "max_memory"),
])
def test_bad_maps_raise_clear_errors(device_map, options, error, words, tmp_path):
    kwargs = {"offload_folder": tmp_path, **options}
    with pytest.raises(error, match=words):
        load_model("tiny:llama-gqa", device_map=device_map, **kwargs)


def test_tied_weights_must_share_a_device(tmp_path):
    with pytest.raises(UnknownModelError, match="tied weights"):
        load_model("tiny:gemma3", device_map={**DISK_MAP, "lm_head": "cpu"},
                   offload_folder=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_absent_cuda_device_is_refused(tmp_path):
    with pytest.raises(ModelUnavailableError, match="CUDA device"):
        load_model("tiny:llama-gqa", device_map=SPLIT_MAP, device="cpu")


def test_missing_accelerate_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # `import accelerate` fails
    with pytest.raises(ModelUnavailableError, match="accelerate"):
        load_model("tiny:llama-gqa", device_map="auto")


# --- cuda:0 + cpu ------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("main", ["cpu", "cuda:0"])
def test_split_between_cuda_and_cpu(main):
    """Layers split between ``cuda:0`` and ``cpu`` (fp32) give the single-device results.

    ``main="cpu"``: layer 1 and the final norm run on the CPU, the others on the GPU, so
    hooks fire on both devices and the interventions' cached values, the layer runner's
    residuals, masks, rotary tables and prefix keys cross devices. ``main="cuda:0"``:
    accelerate's CPU offload (weights in CPU memory, run on the GPU).
    """
    on_gpu = tiny_model("llama-gqa", device="cuda:0")[0]
    on_cpu = tiny_model("llama-gqa", device="cpu")[0]
    split, spec = tiny_model("llama-gqa", device=main, device_map=SPLIT_MAP)
    assert spec.device == main and dict(spec.device_map)["model.layers.1"] == "cpu"
    assert str(model_device(split)) == main
    seen = check_forward_and_cache(on_gpu, split, GPU_TOL)
    z = describe_model(split).hooks.z
    layer_devices = [seen[z.format(layer=layer)].device.type for layer in range(3)]
    assert layer_devices == (["cuda", "cpu", "cuda"] if main == "cpu" else ["cuda"] * 3)
    check_forward_and_cache(on_cpu, split, GPU_TOL)
    check_runner(on_gpu, split, GPU_TOL)
    check_interventions(on_gpu, split, GPU_TOL)
    check_scans(on_gpu, split, GPU_TOL)
    check_scans(on_cpu, split, GPU_TOL, methods=("patch",))
    ids = tokenize_prompts(split, PROMPTS[:2], spec)
    assert generate(split, ids, max_new_tokens=4).texts == \
        generate(on_gpu, ids, max_new_tokens=4).texts
