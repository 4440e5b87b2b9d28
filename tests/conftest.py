"""Shared fixtures: tiny random Stable-Diffusion components built from configs (nothing is downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# at most 2 torch threads (more only stall the tiny models), shared out among pytest-xdist's workers (``-n 2``):
# two workers of 2 threads each on 2 cores fought over them
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads() // _WORKERS)))
_THREADS = torch.get_num_threads()


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, hand the tests out two at a time (``--maxschedchunk 2``) unless the command line says
    otherwise: by default xdist sends each worker a block of consecutive tests at the start, so the slow tests,
    collected first, all went to one worker and ran one after another while the other worker had finished."""
    if getattr(config.option, "maxschedchunk", False) is None:
        config.option.maxschedchunk = 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests marked ``slow`` first (in their order), then the rest as collected: with tests handed out two at a
    time, the longest ones run at once on different workers, and the short ones fill in at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse to run when a test module changed torch's thread count at import: that setting would hold for every
    test of the session (use the ``one_torch_thread`` fixture instead)."""
    if torch.get_num_threads() != _THREADS:
        raise pytest.UsageError(
            f"a test module set torch's thread count when it was imported ({_THREADS} -> {torch.get_num_threads()}), "
            "for the whole session; use pytestmark = pytest.mark.usefixtures('one_torch_thread') instead"
        )


FIXTURES = Path(__file__).parent / "fixtures"


def build_tiny_components(seed: int = 0):
    """A 2-level UNet with cross-attention at both levels, a tiny VAE (factor 2) and a tiny CLIP text encoder."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer.from_pretrained(FIXTURES / "clip_tokenizer")
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Put back torch's CPU thread count after each test: the research scripts' ``main`` sets it (``--threads``,
    default 1), and one test calling them left every later test on one thread (the suite ran about 1.5x slower)."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread while a module of tiny-model tests runs (more threads only stall there), then the count
    before. Use as ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``: a module-level
    ``torch.set_num_threads(1)`` runs when pytest collects the module, before any test, and so left the whole suite
    on one thread (the shipped-model quality test took 193 s instead of about 100)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_components():
    return build_tiny_components()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_components) -> Path:
    """The tiny components saved in the diffusers folder layout (safetensors)."""
    root = tmp_path_factory.mktemp("tiny_sd")
    for name, comp in tiny_components.items():
        comp.save_pretrained(root / name)
    return root


@pytest.fixture()
def tiny_segmenter(tiny_components):
    from diffsegmenter import DiffSegmenter, SegmenterConfig

    c = tiny_components
    return DiffSegmenter(c["vae"], c["unet"], c["text_encoder"], c["tokenizer"], c["scheduler"], SegmenterConfig())


@pytest.fixture(scope="session")
def family_folders(tmp_path_factory):
    """Tiny SDXL / SD3 / SD3-without-T5 / FLUX / PixArt-Σ folders (``tests/family_builders.py``), built once."""
    from .family_builders import BUILDERS

    root = tmp_path_factory.mktemp("families")
    out = {}
    for name, build in BUILDERS.items():
        build(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="session")
def segmenters(family_folders):
    """One segmenter per tiny family folder, at input size 32."""
    from diffsegmenter import DiffSegmenter

    return {n: DiffSegmenter.from_pretrained(f, resolution=32) for n, f in family_folders.items()}
