"""Caption words as evidence of a class: stop words, non-nouns, plural folding and the word list of captions.

Used by :class:`~diffsegmenter.filters.clip.ClipBlipFilter`'s text-text similarity (method.md §5).
"""

from __future__ import annotations

from collections.abc import Iterable

from diffsegmenter.captioner import normalized_words

__all__ = ["CAPTION_NON_NOUNS", "STOP_WORDS", "caption_words", "is_phrase", "singularize"]

_STOP_WORDS_TEXT = """
    a about above across after against all along also am among an and another any are around as at away back be
    because been before behind being below beneath beside besides between beyond both but by can could did do does
    doing down during each either else even ever every few for from further had has have having he her here hers
    herself him himself his how however i if in inside into is it its itself just like many may me might mine more
    most much must my myself near neither next no nor not now of off on once one only onto or other others our ours
    ourselves out outside over own past per rather same several she should since so some such than that the their
    theirs them themselves then there these they this those though through throughout thru till to together too
    toward towards under underneath unless until up upon us very via was we well were what when where whether which
    while who whom whose why will with within without would yet you your yours yourself yourselves
    zero two three four five six seven eight nine ten eleven twelve dozen first second third
    s t d ll m re ve
"""
#: English function words, never class evidence (unless a vocabulary class has that name).
STOP_WORDS: frozenset[str] = frozenset(_STOP_WORDS_TEXT.split())

_NON_NOUNS_TEXT = """
    sitting standing lying laying parked flying riding running walking holding playing looking eating drinking
    hanging posing waiting driving swimming jumping resting sleeping watching carrying pulling pushing grazing
    covered filled made taken shown seen stacked topped lined surrounded dressed stuffed displayed
    sits stands lies flies rides runs walks holds plays looks eats hangs poses waits drives
    is are was were be has have had there
    big small large little tall short long old young new open empty full close closeup front bottom left right
    red white black blue green yellow orange brown pink purple gray grey silver golden dark bright colorful
    different various other many several lots lot bunch couple pair group view
    very really pretty just up down out together outside inside
"""
#: Frequent non-noun words of BLIP captions (verbs, adjectives, adverbs), removed with ``noun_heuristic=True``
#: (unless a vocabulary class has that name). Kept short on purpose: ``-ing`` nouns such as "building", "ceiling" or
#: "painting" are not listed.
CAPTION_NON_NOUNS: frozenset[str] = frozenset(_NON_NOUNS_TEXT.split())

_IRREGULAR_PLURALS = {
    "men": "man",
    "women": "woman",
    "children": "child",
    "people": "person",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "geese": "goose",
    "oxen": "ox",
    "knives": "knife",
    "wolves": "wolf",
    "leaves": "leaf",
    "shelves": "shelf",
    "loaves": "loaf",
}
_NOT_PLURAL_ENDINGS = ("ss", "us", "is", "ous", "ics")
#: Words that end like plurals but are their own singular.
_SAME_SINGULAR = frozenset({"species", "series", "lens", "news", "canvas", "atlas", "chassis", "means"})
#: "-oes" plurals of "-o" nouns; other "-oes" words are "-oe" nouns (shoes, toes, canoes).
_O_ES_PLURALS = frozenset(
    {"potatoes", "tomatoes", "heroes", "echoes", "vetoes", "torpedoes", "volcanoes", "mangoes", "mosquitoes",
     "dominoes", "buffaloes", "tornadoes", "flamingoes"}
)  # fmt: skip


def singularize(word: str) -> str:
    """Rule-based singular of a lower-case English noun (a stand-in for spaCy's lemma).

    Args:
        word (`str`): lower-case word, e.g. ``"puppies"``, ``"buses"``, ``"dogs"``, ``"glass"``.

    Returns:
        `str`: ``"puppy"``, ``"bus"``, ``"dog"``, ``"glass"`` (words that do not look plural, and a few that only
        look so such as ``"species"`` or ``"lens"``, are returned as is; ``"houses"`` -> ``"house"``, ``"shoes"`` ->
        ``"shoe"``, ``"potatoes"`` -> ``"potato"``).
    """
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if len(word) <= 3 or not word.endswith("s") or word.endswith(_NOT_PLURAL_ENDINGS) or word in _SAME_SINGULAR:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("uses"):  # buses -> bus, but houses, causes, blouses -> house, cause, blouse
        return word[:-1] if word[-5] in "aeiou" else word[:-2]
    if word.endswith("oes"):
        return word[:-2] if word in _O_ES_PLURALS else word[:-1]
    if word.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return word[:-2]
    return word[:-1]


def caption_words(
    captions: Iterable[str],
    *,
    stop_words: Iterable[str] = STOP_WORDS,
    non_nouns: Iterable[str] = CAPTION_NON_NOUNS,
    phrases: Iterable[str] = (),
    keep: Iterable[str] = (),
) -> list[str]:
    """The candidate words of some captions, in order of first appearance, without duplicates.

    Args:
        captions (`Iterable[str]`): captions (or caption continuations).
        stop_words (`Iterable[str]`, *optional*, defaults to :data:`STOP_WORDS`): words to drop.
        non_nouns (`Iterable[str]`, *optional*, defaults to :data:`CAPTION_NON_NOUNS`): more words to drop (pass
            ``()`` to disable the noun heuristic).
        phrases (`Iterable[str]`, *optional*): multi-word names (e.g. ``"traffic light"``, ``"t-shirt"``; see
            :func:`is_phrase`) added, as written, when their words appear consecutively in a caption (the last word
            may be plural; hyphens and spaces alike).
        keep (`Iterable[str]`, *optional*): words never dropped (the vocabulary's class names), e.g. ``"light"``.

    Returns:
        `list[str]`: alphabetic words of at least 2 letters, each followed by its singular when that differs
        (``"dogs"`` -> ``["dogs", "dog"]``); the phrases a caption matches follow that caption's words.
    """
    drop = (set(stop_words) | set(non_nouns)) - {_fold_name(k) for k in keep}
    wanted = {_phrase_key(p): p for p in phrases}
    wanted = {k: v for k, v in wanted.items() if len(k) > 1}
    sizes = sorted({len(k) for k in wanted})
    out: dict[str, None] = {}
    for caption in captions:
        tokens = [t for t in normalized_words(caption) if t.isalpha()]
        for tok in tokens:
            if len(tok) < 2 or tok in drop:
                continue
            out.setdefault(tok)
            single = singularize(tok)
            if single not in drop:
                out.setdefault(single)
        for n in sizes:
            for i in range(len(tokens) - n + 1):
                gram = tuple(tokens[i : i + n])
                for cand in (gram, (*gram[:-1], singularize(gram[-1]))):
                    if cand in wanted:
                        out.setdefault(wanted[cand])
    return list(out)


def _phrase_key(name: str) -> tuple[str, ...]:
    """A name's words as captions are matched against them: alphabetic words only, so that ``"t-shirt"`` is
    ``("t", "shirt")``, as a caption's "t-shirt" or "t shirt" reads."""
    return tuple(w for w in normalized_words(name) if w.isalpha())


def is_phrase(name: str) -> bool:
    """Whether a class name is several words (``"traffic light"``, ``"t-shirt"``, ``"floor-wood"``): matched as a
    phrase by :func:`caption_words`."""
    return len(_phrase_key(name)) > 1


def _fold_name(name: str) -> str:
    return " ".join(normalized_words(name))
