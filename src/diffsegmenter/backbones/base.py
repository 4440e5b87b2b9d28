"""The :class:`DiffusionBackbone` interface: every operation an attention pass needs from a diffusion model.

A backbone is the frozen text-to-image model a segmenter reads: an image autoencoder, a denoiser whose attention is
captured, one or more text encoders and a noise schedule. The segmenter, the attention passes, the category filters
and the benchmarks call only these operations, so none of them names a model family: a new family (SDXL, SD3, FLUX,
PixArt) is a new subclass.

A backbone holds no segmenter settings: what an operation depends on (resolution, antialiasing, posterior sample or
mean, seed, emphasis weight and positions, timestep) is an argument. Its only state is a cache of text embeddings.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..prompts import apply_emphasis

__all__ = ["TEXT_CACHE_BYTES", "DiffusionBackbone", "FlowSigma", "Sampler", "TextEmbeddingCache"]

TEXT_CACHE_BYTES = 1 << 30
"""Bytes of prompt embeddings a backbone keeps (on the text encoder's device) for prompts seen again: 1 GiB, about
9,000 SD1.5 prompts in fp16 or 250 of FLUX.1-dev's (513 x 4096); the least recently used go first."""


class TextEmbeddingCache:
    """Prompt embeddings by key, bounded in bytes: the least recently used are dropped once the entries hold more
    than ``max_bytes`` (the last one stays, whatever its size). A count of entries bounded nothing: a FLUX.1-dev
    embedding is 36 times an SD1.5 one, so 4096 of them held 17 GB of GPU memory in a server seeing new classes.

    Args:
        max_bytes (`int`, defaults to [`TEXT_CACHE_BYTES`]): the bound.
    """

    def __init__(self, max_bytes: int = TEXT_CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple) -> torch.Tensor | None:
        """The embedding under ``key`` (now the most recently used), or None."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        """Keep ``value`` under ``key``, dropping the least recently used entries beyond the bound."""
        old = self._items.pop(key, None)
        if old is not None:
            self.nbytes -= old.numel() * old.element_size()
        self._items[key] = value
        self.nbytes += value.numel() * value.element_size()
        while self.nbytes > self.max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)
            self.nbytes -= dropped.numel() * dropped.element_size()


@dataclass(frozen=True)
class FlowSigma:
    """A flow-matching noise level given exactly: a timestep the flow families (SD3, FLUX) take besides an int.

    An int ``t`` keeps its meaning everywhere, "t of 1000 on SD's DDPM schedule", and a flow family maps it to the
    sigma of equal signal-to-noise ratio (:func:`~diffsegmenter.backbones.dit.flow_sigma`; at most 0.94, at
    t = 999). A flow sampler's timesteps are ``FlowSigma`` values, so generation can start from pure noise (sigma 1)
    and step on the scheduler's own sigmas. The DDPM families (SD1/SD2, SDXL, PixArt) take ints only.

    Attributes:
        sigma (`float`): in [0, 1]; the noisy latents are ``(1 - sigma) * x0 + sigma * noise`` (1 = pure noise).
    """

    sigma: float

    def __post_init__(self) -> None:
        s = self.sigma
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= float(s) <= 1.0:
            raise ValueError(f"a flow sigma must be a number in [0, 1] (1 = pure noise), got {s!r}")


class Sampler(Protocol):
    """A family's reverse process for generation and editing (:meth:`DiffusionBackbone.sampler`).

    Attributes:
        timesteps (`list`): the steps, from the noisiest to the cleanest; each is given as is to
            :meth:`DiffusionBackbone.denoise` and :meth:`DiffusionBackbone.add_noise` (ints for the DDPM
            families, :class:`FlowSigma` values for the flow-matching ones).
    """

    timesteps: list

    def step(self, prediction: torch.Tensor, timestep, latents: torch.Tensor) -> torch.Tensor:
        """One reverse step: the latents at ``timestep`` and the (guided) denoiser prediction there -> the latents
        at the next entry of :attr:`timesteps` (the clean latents after the last one); same shape and dtype."""
        ...


class DiffusionBackbone(ABC):
    """A frozen diffusion model seen as the operations of one attention pass.

    Subclasses implement the model-specific steps (:meth:`encode_latents`, :meth:`add_noise`, :meth:`encode_ids`,
    :meth:`empty_ids`, :meth:`denoise`, :meth:`capture`, :meth:`attention_layers`, :meth:`sample_bytes`, and the
    properties). Image preprocessing, per-image seeded noise and the cached, emphasised text encoding are shared.

    Attributes:
        tokenizer: the tokenizer prompts are built with (``diffsegmenter.prompts`` reads BOS/EOS/padding from it).
        default_level_weights (`dict[int, float]`): fusion weight per downsampling factor that suits the family's
            denoiser (for SD1/SD2, the released code's 0.3/0.5/0.1/0.1 over 1/8, 1/4, 1/2, 1/1).
    """

    tokenizer = None

    @property
    def call_lock(self) -> threading.RLock:
        """Held by every :class:`~diffsegmenter.DiffSegmenter` call on this backbone (``segment``, ``edit``, a
        ``session``): capture installs processors on the shared model and reads one store, so two calls at once
        would read each other's attention. Re-entrant: the diffusion filter segments inside a ``segment`` call."""
        lock = self.__dict__.get("_call_lock")
        if lock is None:  # made on first use (dict.setdefault is atomic), also for subclasses that skip __init__
            lock = self.__dict__.setdefault("_call_lock", threading.RLock())
        return lock

    def __init__(self) -> None:
        self._text_cache = TextEmbeddingCache()
        self._empty: torch.Tensor | None = None  # the empty prompt's embedding, used by every emphasis: kept apart

    @property
    @abstractmethod
    def default_level_weights(self) -> dict[int, float]:
        """Fusion weight per downsampling factor that suits the family's denoiser (a new dict)."""

    #: The family's name (``"sd"``, ``"sdxl"``, ``"sd3"``, ``"flux"``, ``"pixart"``).
    family = "sd"

    #: Whether the denoiser sees each text token through a causal text encoder only (the SD and SDXL UNets' CLIP):
    #: a token's embedding then depends on the words before it alone. False for the transformer families (T5, or
    #: joint attention, mixes the later words in).
    causal_text_encoder = True

    #: The model folder's subfolder that holds the denoiser (``"unet"``; ``"transformer"`` for the DiT families).
    denoiser_folder = "unet"

    #: How many latent channels one denoiser input channel group packs: FLUX's pipeline packs 2x2 latent patches
    #: into a token (4), the other families feed the latents as they are (1).
    latent_packing = 1

    #: The family's text-to-image models, named in the error that refuses a conditioned one.
    text_to_image_examples = (
        "stable-diffusion-v1-5/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1, "
        "stabilityai/stable-diffusion-xl-base-1.0"
    )

    @classmethod
    def check_text_to_image_inputs(cls, denoiser_in_channels: int, latent_channels: int) -> None:
        """Refuse a denoiser that takes more input channels than the noisy latents: an inpainting, depth-, image- or
        control-conditioned model, whose pipeline gives it inputs a segmenter has not got. Such folders look like
        text-to-image ones to the loader, and segmenting would fail inside the denoiser's first layer.

        Args:
            denoiser_in_channels (`int`): the UNet's or transformer's ``in_channels`` (its config).
            latent_channels (`int`): the VAE's ``latent_channels``.

        Raises:
            ValueError: naming the channel counts, the kind of model they suggest, and the family's text-to-image
                models to use instead.
        """
        given, p = int(denoiser_in_channels), cls.latent_packing
        latent = int(latent_channels) * p
        if given == latent:
            return
        kinds = {
            2 * latent + p: "an inpainting",  # + masked-image latents + a 1-channel mask (SD, SDXL inpainting)
            2 * latent + 64 * p: "an inpainting",  # FLUX.1 Fill: the mask as 8x8 pixels per latent position
            latent + p: "a depth-conditioned",  # stable-diffusion-2-depth
            2 * latent: "an image-conditioned",  # InstructPix2Pix, FLUX.1 Canny / Depth
            latent + 3 * p: "an upscaling",  # stable-diffusion-x4-upscaler: + the low-resolution RGB image
        }
        kind = kinds.get(given, "a conditioned")
        packed = f" ({latent_channels} latent channels packed {p} to a token)" if p > 1 else ""
        denoiser = "UNet" if cls.denoiser_folder == "unet" else cls.denoiser_folder
        raise ValueError(
            f"the {denoiser} takes {given} input channels where the VAE gives {latent}{packed}: {kind} model, which "
            "needs inputs besides the noisy latents (a mask, a depth map, an image) and is not supported for "
            f"segmentation; use the text-to-image model of the same family (e.g. {cls.text_to_image_examples})"
        )

    def family_defaults(self) -> dict:
        """:class:`~diffsegmenter.config.SegmenterConfig` field values this family needs where the class defaults
        (the released SD1.5 code's) do not fit; a field a user (or the model folder) did not set comes from here.
        Empty for SD1/SD2, so their behaviour is the released code's."""
        return {}

    # ------------------------------------------------------------------ what the model is
    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the denoiser runs."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The denoiser's dtype; text embeddings and noisy latents are given to it in this dtype."""

    @property
    @abstractmethod
    def native_resolution(self) -> int:
        """Input side length the model was trained at (the denoiser's sample size times the autoencoder's
        downsampling; 512 for SD1.5, 64 for the shipped shapes model)."""

    # ------------------------------------------------------------------ images
    def check_resolution(self, resolution: int, setting: str = "resolution") -> None:
        """Refuse an input size this backbone cannot read, naming the ``setting`` that asked for it and the sizes
        near it that work. The UNet families read any size (odd latent sizes included): nothing to refuse.

        Raises:
            ValueError: in the transformer families, a size that is not a whole number of patches, or beyond the
                model's position table.
        """
        return None

    def preprocess(
        self, image: np.ndarray, resolution: int, *, antialias: bool = False, device: torch.device | None = None
    ) -> torch.Tensor:
        """RGB image -> the autoencoder's input.

        Args:
            image (`np.ndarray`): (H, W, 3) uint8 RGB.
            resolution (`int`): output side length R (aspect not kept).
            antialias (`bool`, *optional*, defaults to False): antialias the bilinear resize (False = plain bilinear,
                ``align_corners=False``, as the released code).
            device (`torch.device`, *optional*): where to resize: the uint8 image goes there first (pinned, without
                waiting, on a GPU); None = the CPU.

        Returns:
            `torch.Tensor`: (3, R, R) float32 in [-1, 1] on ``device`` (the CPU by default).
        """
        from ..transfer import to_device

        x = torch.from_numpy(np.ascontiguousarray(image))
        if device is not None:
            x = to_device(x, device)
        x = x.permute(2, 0, 1).float().div(255.0).unsqueeze(0)
        r = int(resolution)
        if x.shape[-2:] != (r, r):
            x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=antialias)
        return (x[0] * 2.0 - 1.0).clamp(-1.0, 1.0)

    @abstractmethod
    def encode_latents(
        self,
        images: Sequence[np.ndarray],
        resolution: int,
        *,
        sample: bool = False,
        seed: int = 0,
        antialias: bool = False,
        keep_on_device: bool = False,
    ) -> torch.Tensor:
        """Encode images to clean latents, scaled (and shifted) as the denoiser expects them.

        Args:
            images (`Sequence[np.ndarray]`): (H, W, 3) uint8 RGB arrays.
            resolution (`int`): input side length (see :meth:`preprocess`).
            sample (`bool`, *optional*, defaults to False): draw from the encoder's posterior (seeded by
                ``seed + 1``, the same draw for every image) instead of taking its mean.
            seed (`int`, *optional*, defaults to 0): seed of that draw.
            antialias (`bool`, *optional*, defaults to False): see :meth:`preprocess`.
            keep_on_device (`bool`, *optional*, defaults to False): resize on the autoencoder's device and leave the
                latents there (no wait for the device; the segmenter's fast path). The same values as on the CPU up
                to the device's float rounding.

        Returns:
            `torch.Tensor`: (N, c, h, w) float32 on the CPU (on the autoencoder's device with ``keep_on_device``).
        """

    def noise_like(self, latents: torch.Tensor, seed: int) -> torch.Tensor:
        """Per-image noise: every image gets ``torch.randn`` of ``torch.Generator().manual_seed(seed)``, so its result
        does not depend on which other images share the batch.

        Returns:
            `torch.Tensor`: (N, c, h, w) float32 on the CPU, the shape of ``latents``.
        """
        one = torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(seed))
        return one.expand(latents.shape[0], *one.shape).clone()  # every image's draw is this one: drawn once

    @abstractmethod
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int | FlowSigma) -> torch.Tensor:
        """Noise clean latents to ``timestep`` with the family's forward process.

        Args:
            latents (`torch.Tensor`): (N, c, h, w) clean latents.
            noise (`torch.Tensor`): (N, c, h, w) standard normal noise.
            timestep (`int` or `FlowSigma`): the timestep, the same for every sample (a :class:`FlowSigma` for the
                flow-matching families only).

        Returns:
            `torch.Tensor`: (N, c, h, w) noisy latents, on the inputs' device and in their dtype.
        """

    def prediction_target(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int | FlowSigma) -> torch.Tensor:
        """What :meth:`denoise` would ideally return for :meth:`add_noise` ``(latents, noise, timestep)``: its
        training target (the noise for epsilon prediction, v for v prediction, the velocity ``noise - latents`` for
        flow matching). Denoising errors are measured against it (the diffusion category filter).

        This default is the noise (epsilon prediction); the families override it where they predict something else.

        Args:
            latents (`torch.Tensor`): (N, c, h, w) clean latents.
            noise (`torch.Tensor`): (N, c, h, w) the noise they were noised with, same device and dtype.
            timestep (`int` or `FlowSigma`): as given to :meth:`add_noise`.

        Returns:
            `torch.Tensor`: (N, c, h, w), on the inputs' device and in their dtype.
        """
        return noise

    # ------------------------------------------------------------------ text
    @abstractmethod
    def encode_ids(self, input_ids: Sequence[int], text: str | None = None) -> torch.Tensor:
        """One text-encoder call on one prompt's padded token ids, not cached.

        ``text`` is the prompt the ids were made from: families with several text encoders (SDXL, SD3, FLUX)
        tokenise it for the encoders whose tokens are not read. Families that need a pooled embedding (SDXL, SD3,
        FLUX) append it as one extra, zero-padded last row; token positions never reach that row.

        Returns:
            `torch.Tensor`: (T, D) in :attr:`dtype` on the text encoder's device.
        """

    def empty_ids(self) -> list[int]:
        """The padded token ids of the empty prompt (``tokenizer("")`` padded to its ``model_max_length``)."""
        tok = self.tokenizer
        return list(tok("", padding="max_length", max_length=tok.model_max_length)["input_ids"])

    @torch.inference_mode()
    def empty_embedding(self) -> torch.Tensor:
        """Text embedding of the empty prompt, (T, D) in :attr:`dtype`; encoded once (emphasis, the
        classifier-free-guidance reference, filters)."""
        if self._empty is None:
            self._empty = self.encode_ids(self.empty_ids(), text="")
        return self._empty

    @torch.inference_mode()
    def unconditional_embedding(self) -> torch.Tensor:
        """The text embedding the model was trained with for *no prompt*: classifier-free guidance's unconditional
        input (editing) and the diffusion filter's baseline. The empty prompt's encoding (:meth:`empty_embedding`),
        except where the family's pipeline zeroes it (SDXL's ``force_zeros_for_empty_prompt``). (T, D) in
        :attr:`dtype`."""
        return self.empty_embedding()

    def encode_text(
        self,
        input_ids: Sequence[int],
        *,
        emphasis: float = 1.0,
        positions: Sequence[int] = (),
        text: str | None = None,
    ) -> torch.Tensor:
        """Text embedding of a prompt with some tokens emphasised; cached per (ids, emphasis, positions), at most
        [`TEXT_CACHE_BYTES`] of them (least recently used dropped first).

        Emphasis is Compel's ``z_empty + w * (z - z_empty)`` on the given positions
        (:func:`~diffsegmenter.prompts.apply_emphasis`).

        Args:
            input_ids (`Sequence[int]`): the prompt's padded token ids.
            emphasis (`float`, *optional*, defaults to 1.0): the weight w; 1.0 = none.
            positions (`Sequence[int]`, *optional*): the token positions it weights.
            text (`str`, *optional*): the prompt's text (see :meth:`encode_ids`).

        Returns:
            `torch.Tensor`: (T, D) in :attr:`dtype`.
        """
        key = (emphasis, *input_ids, -1, *positions, text)
        z = self._text_cache.get(key)
        if z is None:
            z = self.encode_ids(list(input_ids), text=text)
            if emphasis != 1.0:
                z = apply_emphasis(z, self.empty_embedding(), list(positions), emphasis)
            self._text_cache.put(key, z)
        return z

    # ------------------------------------------------------------------ denoiser
    @abstractmethod
    def denoise(self, latents: torch.Tensor, timestep: int | FlowSigma, text: torch.Tensor) -> torch.Tensor:
        """One denoiser forward.

        Args:
            latents (`torch.Tensor`): (B, c, h, w) noisy latents in :attr:`dtype` on :attr:`device`.
            timestep (`int` or `FlowSigma`): the timestep, the same for every sample (see :meth:`add_noise`).
            text (`torch.Tensor`): (B, T, D) text embeddings.

        Returns:
            `torch.Tensor`: (B, c, h, w) the denoiser's prediction (noise for SD1, v for SD2-v, the velocity
            ``noise - x0`` for SD3 and FLUX), what the family's :meth:`sampler` steps with.
        """

    def capture_session(self) -> AbstractContextManager:
        """A context (one run of many passes) in which :meth:`capture` switches capturing processors installed once
        instead of installing them per pass; the model's own processors are back on exit, also after an exception.
        Families without one get a context that does nothing (each :meth:`capture` installs and restores)."""
        return contextlib.nullcontext()

    @abstractmethod
    def capture(
        self, store, self_factor: int | None = None, *, blocks=None, self_blocks=None
    ) -> AbstractContextManager:
        """A context in which :meth:`denoise` records attention in ``store``; the model is restored on exit, also
        after an exception.

        Args:
            store (`~diffsegmenter.attention.AttentionStore`): receives every cross-attention layer's
                probabilities and the queries/keys of the self-attention layers at ``self_factor``. Levels are
                found from the tensors' shapes and ``store.latent_size``.
            self_factor (`int`, *optional*): downsampling factor of the self-attention layers to read; None = the
                finest level that has self-attention (UNet families).
            blocks, self_blocks (`list[int]`, *optional*): transformer families: the blocks read for the class maps
                and for completion; None = the family's default.
        """

    def check_reading(  # noqa: B027 - optional: a backbone from outside the package may refuse nothing early
        self, self_factor: int | None = None, *, blocks=None, self_blocks=None
    ) -> None:
        """Refuse what :meth:`capture` would refuse for these arguments, without capturing (so settings this family
        cannot read are refused when a segmenter is built, not at its first image).

        Raises:
            ValueError: the message names the setting and what this family reads instead.
        """

    @abstractmethod
    def attention_layers(self) -> dict[str, tuple[str, int]]:
        """Which layers carry attention, and where.

        Returns:
            `dict[str, tuple[str, int]]`: layer name -> (``"cross"`` or ``"self"``, downsampling factor relative
            to the latent; 1 = finest).
        """

    @abstractmethod
    def sample_bytes(self, latent_size: tuple[int, int]) -> int:
        """Estimated host memory of one denoiser sample with attention capture at this latent size, in bytes (an
        over-estimate; sizes CPU batches)."""

    # ------------------------------------------------------------------ generation (editing)
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode latents (as :meth:`encode_latents` gives them) to images; used by editing.

        Args:
            latents (`torch.Tensor`): (N, c, h, w) latents, scaled (and shifted) as the denoiser expects them.

        Returns:
            `torch.Tensor`: (N, 3, H, W) float32 in [-1, 1] on the CPU.
        """
        raise NotImplementedError(
            f"{type(self).__name__} cannot decode latents yet, so it cannot edit images: implement decode_latents()"
        )

    def prompt_ids(self, prompt: str) -> list[int]:
        """The token ids :meth:`prompt_embedding` encodes: ``prompt`` tokenised by :attr:`tokenizer`, padded to its
        ``model_max_length``; cheap, so editing checks its prompts with it before anything runs.

        Raises:
            ValueError: the prompt does not fit the text encoder; the message says how long it may be.
        """
        tok = self.tokenizer
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=False)["input_ids"]
        if len(ids) > tok.model_max_length:
            raise ValueError(
                f"the prompt {prompt[:40]!r}... is {len(ids)} tokens long; this text encoder reads at most "
                f"{tok.model_max_length}: shorten it"
            )
        return list(ids)

    @torch.inference_mode()
    def prompt_embedding(self, prompt: str) -> torch.Tensor:
        """Text embedding of a free prompt (no emphasis), what :meth:`denoise` takes for one sample; used by editing.

        The prompt is tokenised by :meth:`prompt_ids` and encoded by :meth:`encode_text` with its text (the
        families' other encoders tokenise the text themselves).

        Returns:
            `torch.Tensor`: (T, D) in :attr:`dtype` (as :meth:`encode_text`).

        Raises:
            ValueError: the prompt does not fit the text encoder; the message says how long it may be.
        """
        return self.encode_text(self.prompt_ids(prompt), text=prompt)

    def sampler(self, steps: int, latent_size: tuple[int, int] | None = None) -> Sampler:
        """A fresh reverse process of ``steps`` steps for this family (deterministic: DDIM for the DDPM families, the
        flow-matching Euler scheduler for SD3 and FLUX).

        Args:
            steps (`int`): number of steps of the full schedule, >= 1.
            latent_size (`tuple[int, int]`, *optional*): (h, w) of the latents it will run on; a schedule that
                depends on the image size (FLUX's resolution-dependent shift) needs it; None = the native size's.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no sampler yet, so it cannot edit images: implement sampler()"
        )

    def guide(self, unconditional: torch.Tensor, conditional: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guidance: ``u + guidance * (c - u)`` of the denoiser's predictions on the empty prompt and
        on the prompt (linear, so the same for noise, v and flow velocity predictions, as the diffusers pipelines
        combine them; a family whose predictions combine otherwise overrides this)."""
        return unconditional + guidance * (conditional - unconditional)
