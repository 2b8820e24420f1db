"""``Prompter.render``'s fast path (text put into the template's frame) gives exactly the chat template's string,
and falls back to the template when the template alters the text."""

import copy

import pytest

from lco.models.tiny import build_processor
from lco.prompts import Prompter

TEXTS = ["", "a red circle", "  spaced  \n\n", "{{ not jinja }} {% raw %} <|im_end|> \\n", "Größe 大小 🙂",
         "x" * 3000]


@pytest.mark.parametrize("name", ["tiny_text", "tiny_vl", "tiny_omni"])
@pytest.mark.parametrize("system", [None, "Embed this."])
def test_framed_text_equals_the_template(name, system):
    processor, prompter = build_processor(name), Prompter(system=system)
    assert prompter.frame(processor) is not None
    for text in TEXTS:
        assert prompter.render(processor, {"text": text}) == prompter._template(processor, {"text": text})
    custom = Prompter(suffixes={**prompter.suffixes, "text": " -> one word:"}, system=system)
    assert custom.render(processor, {"text": "abc"}).count(" -> one word:") == 1


def test_a_template_that_changes_the_text_is_rendered_item_by_item():
    processor = copy.deepcopy(build_processor("tiny_text"))
    processor.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'][-1]['text'] | trim }}"
                               "{% endfor %}<assistant>")
    prompter = Prompter()
    assert prompter.frame(processor) is None
    trimmed = "<user>padded  \nSummarize the above text in one word:<assistant>"
    assert prompter.render(processor, {"text": "  padded  "}) == trimmed
