"""Text triplets with All-NLI's item lengths (or one fixed length), for the benchmarks.

The paper trains on All-NLI: SimCSE's NLI set, SNLI and MultiNLI premises as anchors with an entailed hypothesis
as positive and a contradicting one as hard negative (FIELD_NOTES section 2). Those are short sentences of varied
length: premises roughly 10-30 words with a long tail (MultiNLI's spoken and written genres run longer than SNLI's
image captions), hypotheses shorter. No NLI data can be reached from here (FIELD_NOTES section 4), so the shape is
stated rather than measured from the set:

- anchor words ~ lognormal, median 16, sigma 0.45, clipped to [4, 80] (middle 80%: 9 to 29 words);
- positive and negative words ~ lognormal, median 9, sigma 0.35, clipped to [3, 40] (6 to 14 words).

Words are drawn from ``WORDS``, each one token in the Qwen2/2.5 vocabulary with or without a leading space, so an
item of k words is k tokens; lco's ``Preprocessor`` then adds the paper's prompt and the model's chat template
(about 30 tokens with Qwen's). ``uniform_words=k`` gives every item k words instead: the uniform-length control,
whose items all have the same token count.
"""

from __future__ import annotations

import random

WORDS = ("the a man woman boy girl dog cat child people group person two three young old small big red blue green "
         "white black is are was were in on at with near by of to from and while for his her their its some many "
         "street park water field road house room table car bike ball grass snow city building shop market stage "
         "walking running standing playing holding looking eating riding reading working shirt hat dress game music "
         "food picture phone book camera bag horse bird tree sky day night outside inside alone happy busy front top "
         "side left right down up over under there someone everyone another other each every very just not no "
         "yes").split()
# side -> (median words, sigma of log words, fewest, most)
SHAPE = {"anchor": (16, 0.45, 4, 80), "positive": (9, 0.35, 3, 40), "negative": (9, 0.35, 3, 40)}


class NliShaped:
    """``n`` (anchor, positive, negative) text triplets drawn with ``seed``; same interface as lco's sources
    (``load``, ``describe``)."""

    def __init__(self, n: int = 1024, seed: int = 0, uniform_words: int | None = None):
        if uniform_words is not None and (isinstance(uniform_words, bool) or not isinstance(uniform_words, int)
                                          or uniform_words < 1):
            raise ValueError(f"uniform_words={uniform_words!r}: use an integer >= 1, or null for All-NLI lengths")
        self.n, self.seed, self.uniform_words = n, seed, uniform_words

    def describe(self) -> str:
        shape = f"uniform_words={self.uniform_words}" if self.uniform_words else "All-NLI lengths"
        return f"nli_shaped(n={self.n}, seed={self.seed}, {shape})"

    def _words(self, rng: random.Random, side: str) -> int:
        if self.uniform_words:
            return self.uniform_words
        median, sigma, low, high = SHAPE[side]
        return min(high, max(low, round(rng.lognormvariate(0.0, sigma) * median)))

    def load(self) -> list[dict]:
        rng = random.Random(f"nli-shaped-{self.seed}")
        say = lambda side: {"text": " ".join(rng.choices(WORDS, k=self._words(rng, side)))}  # noqa: E731
        return [{"anchor": say("anchor"), "positive": say("positive"), "negatives": [say("negative")]}
                for _ in range(self.n)]
