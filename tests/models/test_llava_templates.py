"""Conversations encoded with a checkpoint's own chat template equal, token for token, what the checkpoint's
processor makes of the same conversation (`apply_chat_template`, image tokens expanded), with a real Llama-family
SentencePiece tokenizer (Mistral-7B's, shipped by mistral-common) and a byte-level BPE with Qwen2's special tokens;
labels are exactly the answers and their end tokens."""

from importlib import resources

import pytest
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AddedToken,
    CLIPImageProcessor,
    LlamaTokenizer,
    LlavaConfig,
    LlavaNextConfig,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from vlft.data.conversation import IGNORE_INDEX, to_messages
from vlft.data.dataset import expand_markers, token_spec
from vlft.models.base import ConversationBundle
from vlft.models.llava import template_of
from vlft.models.llava_visual import LlavaVisual

# The chat templates the checkpoints ship (chat_template.json), verbatim.
LLAVA_15_HF = (  # llava-hf/llava-1.5-7b-hf
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
LLAVA_NEXT_MISTRAL_HF = (  # llava-hf/llava-v1.6-mistral-7b-hf: no generation markers; writes '<\s>' as text
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' }}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'][0]['text'] + '<\\\\s> '}}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
ONEVISION_HF = (  # llava-hf/llava-onevision-qwen2-*-hf
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TILES = [[32, 32], [32, 64], [64, 32], [64, 64]]
SINGLE = [{"from": "human", "value": "<image>\nWhat shape is this?"}, {"from": "gpt", "value": "a red circle"}]
MULTI = [*SINGLE, {"from": "human", "value": "And its colour?"}, {"from": "gpt", "value": "red"}]


@pytest.fixture(scope="module")
def llama_tokenizer():
    """Mistral-7B's 32k SentencePiece tokenizer (byte fallback), as a LlamaTokenizer, plus llava-hf's tokens."""
    pytest.importorskip("sentencepiece")
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    model = resources.files("mistral_common").joinpath("data", "tokenizer.model.v1")
    extracted = SentencePieceExtractor(str(model)).extract(BPE)
    tokenizer = LlamaTokenizer(vocab=extracted["vocab"], merges=extracted["merges"], add_bos_token=True)
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    assert len(tokenizer) == 32002 and tokenizer.convert_tokens_to_ids("<image>") == 32000
    return tokenizer


@pytest.fixture(scope="module")
def qwen_like_tokenizer():
    """A byte-level BPE (Qwen2's kind) trained on a few sentences, with Qwen2's and OneVision's special tokens;
    no package on the index ships Qwen2's own."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    backend.decoder = decoders.ByteLevel()
    corpus = ["What shape is this? a red circle. And its colour? red. user assistant system"] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<image>", "<video>"])


def checkpoint(kind: str, tokenizer):
    """(processor, config) of a llava-1.5-hf-, llava-next- or onevision-shaped checkpoint with its template."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    clip = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    vision = {"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8}
    if kind == "llava-1.5":
        processor = LlavaProcessor(image_processor=CLIPImageProcessor(**clip), tokenizer=tokenizer, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_15_HF)
        return processor, LlavaConfig(image_token_index=image_id, vision_config=vision)
    if kind == "llava-next":
        processor = LlavaNextProcessor(image_processor=LlavaNextImageProcessor(**clip, image_grid_pinpoints=TILES),
                                       tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                                       num_additional_image_tokens=1, chat_template=LLAVA_NEXT_MISTRAL_HF)
        return processor, LlavaNextConfig(image_token_index=image_id, vision_config=vision,
                                           image_grid_pinpoints=TILES)
    size = {"height": 32, "width": 32}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=TILES),
        video_processor=LlavaOnevisionVideoProcessor(size=size), tokenizer=tokenizer, num_image_tokens=16,
        vision_feature_select_strategy="full", chat_template=ONEVISION_HF)
    config = LlavaOnevisionConfig(image_token_index=image_id, video_token_index=tokenizer.convert_tokens_to_ids(
        "<video>"), vision_config={"model_type": "siglip_vision_model", "image_size": 32, "patch_size": 8},
        image_grid_pinpoints=TILES)
    return processor, config


def with_image(turns: list[dict], image: Image.Image) -> list[dict]:
    messages = to_messages(turns)
    for message in messages:
        for entry in message["content"]:
            if entry["type"] == "image":
                entry["image"] = image
    return messages


CASES = [("llava-1.5", "llama_tokenizer", ""), ("llava-next", "llama_tokenizer", "<\\s>"),
         ("onevision", "qwen_like_tokenizer", "<|im_end|>")]


@pytest.mark.parametrize("kind, tokenizer_fixture, end_text", CASES)
@pytest.mark.parametrize("turns", [SINGLE, MULTI], ids=["single-turn", "multi-turn"])
def test_input_ids_labels_and_prompt_are_the_checkpoints_own(kind, tokenizer_fixture, end_text, turns, request):
    tokenizer = request.getfixturevalue(tokenizer_fixture)
    processor, config = checkpoint(kind, tokenizer)
    visual = LlavaVisual(processor, config)
    template = template_of(processor, visual)
    bundle = ConversationBundle(model=None, tokenizer=tokenizer, image_processor=None, template=template,
                               num_image_tokens=0, image_token_id=visual.image_token_id, towers={}, base_path="",
                               extra={"visual": visual})
    spec, image = token_spec(bundle), Image.new("RGB", (48, 40), "white")  # not square: any-resolution tiles
    tokens = visual.image(image)[1]

    reference = processor.apply_chat_template(with_image(turns, image), tokenize=True, return_dict=True)
    reference = list(reference["input_ids"][0])
    ids, labels = template.encode(turns, tokenizer, spec)
    ids, labels = (list(seq) for seq in expand_markers(ids, spec, [tokens], labels))
    eos, answers = tokenizer.eos_token_id, [t["value"] for t in turns if t["from"] == "gpt"]
    if end_text == "<|im_end|>":  # the template ends each answer with the end-of-sequence token itself
        assert ids == reference
    else:  # vlft adds one after each answer, so that the model learns to stop
        assert [t for t in ids if t != eos] == reference and ids.count(eos) == len(answers)
    assert reference.count(visual.image_token_id) == tokens
    runs, run = [], []
    for token, label in zip(ids, labels, strict=True):
        assert label in (IGNORE_INDEX, token)
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            runs.append(run)
            run = []
    runs += [run] if run else []
    assert [tokenizer.decode(r, skip_special_tokens=False).strip() for r in runs] == [
        a + end_text + (tokenizer.eos_token if end_text != "<|im_end|>" else "") for a in answers]

    prompt_turns = turns[:-1]
    expected = processor.apply_chat_template(with_image(prompt_turns, image), add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"][0]
    (prompt,) = expand_markers(template.prompt(prompt_turns, tokenizer, spec), spec, [tokens])
    assert list(prompt) == list(expected)


def test_the_system_prompt_is_rendered_by_the_template(qwen_like_tokenizer):
    processor, config = checkpoint("onevision", qwen_like_tokenizer)
    template = template_of(processor, LlavaVisual(processor, config)).with_system("You are terse.")
    text, _ = template.render(template.messages(SINGLE))
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n<image>\n")
