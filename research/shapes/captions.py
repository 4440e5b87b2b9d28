"""Captions of shapes-world scenes, for training the shapes diffusion model.

Design (informed by the two probes of issue 7, where binding shape words to objects emerged only once captions
forced grounding and the text encoder kept the shape words distinct):

- One phrase per object, ``a [position] [colour] <shape>``, joined with ``and`` in a random order, e.g.
  ``"a top left red circle and a bottom right blue square"``. The order carries no information, so the generator has
  to obey the words themselves to draw the right thing in the right place.
- Position words come from the object's centre on a 3×3 grid (``position_phrase``): ``top``/``bottom`` and
  ``left``/``right``, ``center`` for the middle cell. The middle band is 12 px wide, so that each band gets about a
  third of the centres (they lie in ``[r + 1, 63 - r]``).
- Colour is dropped for ``P_DROP_COLOUR`` (40%) of objects and position for ``P_DROP_POSITION`` (30%), independently,
  so that a bare ``a circle`` (the prompt the segmenter uses) is in-distribution.
- A whole caption is empty with probability ``P_EMPTY`` (10%): the unconditional branch of classifier-free guidance.
- The share of single-object scenes (about 1/3) comes from the world itself (object count uniform over 1–3).

Every word any caption can use, and the extra words the segmenter's prompts may use, are in ``VOCABULARY``; the
shapes tokenizer makes each of them one token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .world import COLOUR_NAMES, IMAGE_SIZE, SHAPE_NAMES, Scene, ShapeObject

P_EMPTY = 0.1
P_DROP_COLOUR = 0.4
P_DROP_POSITION = 0.3

# The middle band of the 3x3 position grid: centres within this distance of the image centre are "middle".
MIDDLE_HALF_WIDTH = 6.0

POSITION_WORDS: tuple[str, ...] = ("top", "bottom", "left", "right", "center")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}

CAPTION_WORDS: tuple[str, ...] = ("a", "and", *POSITION_WORDS, *COLOUR_NAMES, *SHAPE_NAMES)
# Words the segmenter's prompts may use ("a photograph of a circle", "the circle shape", "circles", ...). They never
# occur in training captions: their embeddings are the frozen text encoder's random ones.
PROMPT_WORDS: tuple[str, ...] = (
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "photograph",
    "photo",
    "picture",
    "image",
    "shape",
    "shapes",
    "object",
    "objects",
    "background",
    "gray",
    "grey",
    "middle",
    "one",
    "two",
    "three",
    *PLURALS.values(),
)
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(CAPTION_WORDS + PROMPT_WORDS))


def position_phrase(cx: float, cy: float) -> str:
    """Position words for a centre: ``"top left"``, ``"top"``, ``"left"``, ``"center"``, ...

    Args:
        cx (`float`), cy (`float`): the centre in continuous image coordinates (y down).

    Returns:
        `str`: one or two of ``POSITION_WORDS``, vertical first.
    """
    mid = IMAGE_SIZE / 2
    vertical = "top" if cy < mid - MIDDLE_HALF_WIDTH else "bottom" if cy > mid + MIDDLE_HALF_WIDTH else ""
    horizontal = "left" if cx < mid - MIDDLE_HALF_WIDTH else "right" if cx > mid + MIDDLE_HALF_WIDTH else ""
    return " ".join(w for w in (vertical, horizontal) if w) or "center"


def object_phrase(obj: ShapeObject, colour: bool = True, position: bool = True) -> str:
    """``"a [position] [colour] <shape>"`` for one object.

    Args:
        obj (`ShapeObject`): the object.
        colour (`bool`, *optional*, defaults to `True`): include the colour word.
        position (`bool`, *optional*, defaults to `True`): include the position words.

    Returns:
        `str`: the phrase.
    """
    words = ["a"]
    if position:
        words.append(position_phrase(*obj.centre))
    if colour:
        words.append(obj.colour)
    words.append(obj.name)
    return " ".join(words)


def full_caption(scene: Scene) -> str:
    """The complete caption: every object with position and colour, left to right.

    Args:
        scene (`Scene`): the scene.

    Returns:
        `str`: e.g. ``"a top left red circle and a bottom right blue square"``.
    """
    objs = sorted(scene.objects, key=lambda o: (o.centre[0], o.centre[1]))
    return " and ".join(object_phrase(o) for o in objs)


def class_caption(classes: Sequence[str]) -> str:
    """A caption naming classes only: ``"a circle and a square"``.

    Args:
        classes (`Sequence[str]`): shape names.

    Returns:
        `str`: the caption.
    """
    return " and ".join(f"a {c}" for c in classes)


def sample_caption(
    scene: Scene | Sequence[ShapeObject],
    rng: np.random.Generator,
    p_empty: float = P_EMPTY,
    p_drop_colour: float = P_DROP_COLOUR,
    p_drop_position: float = P_DROP_POSITION,
) -> str:
    """A random training caption of a scene (deterministic given the generator's state).

    Args:
        scene (`Scene` or `Sequence[ShapeObject]`): the scene or its objects.
        rng (`np.random.Generator`): the random source; this call always draws the same number of values for a
            given object count, so streams stay aligned.
        p_empty (`float`, *optional*, defaults to 0.1): probability of the empty caption (caption dropout).
        p_drop_colour (`float`, *optional*, defaults to 0.4): per-object probability of omitting the colour.
        p_drop_position (`float`, *optional*, defaults to 0.3): per-object probability of omitting the position.

    Returns:
        `str`: the caption (``""`` when dropped).
    """
    objects = list(scene.objects if isinstance(scene, Scene) else scene)
    u = rng.random(1 + 2 * len(objects))
    order = rng.permutation(len(objects))
    if u[0] < p_empty:
        return ""
    phrases = [
        object_phrase(objects[i], colour=u[1 + 2 * i] >= p_drop_colour, position=u[2 + 2 * i] >= p_drop_position)
        for i in order
    ]
    return " and ".join(phrases)
