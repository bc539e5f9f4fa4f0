import pytest

from vlft.data.cache import read_records
from vlft.data.conversation import IGNORE_INDEX, TokenSpec
from vlft.data.records import DataError, validate_record
from vlft.data.template import LLAVA_V1
from vlft.models.tokenizer import build_word_tokenizer

TEXTS = ["what shape is it ?", "what color ?", "circle red blue", "hello there"]


@pytest.fixture(scope="module")
def tok():
    return build_word_tokenizer(TEXTS, ["USER", "ASSISTANT", ":"])


@pytest.fixture(scope="module")
def spec(tok):
    return TokenSpec(image_token_id=tok.convert_tokens_to_ids("<image>"), num_image_tokens=5,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_multi_turn_labels_cover_only_answers_and_their_eos(tok, spec):
    turns = [{"from": "human", "value": "<image>\nwhat shape is it ?"}, {"from": "gpt", "value": "circle"},
             {"from": "human", "value": "what color ?"}, {"from": "gpt", "value": "red"}]
    input_ids, labels = LLAVA_V1.encode(turns, tok, spec, max_length=100)
    learned = [t for t, lab in zip(input_ids, labels, strict=True) if lab != IGNORE_INDEX]
    circle, red, eos = ids(tok, "circle")[0], ids(tok, "red")[0], tok.eos_token_id
    assert learned == [circle, eos, red, eos]
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(input_ids, labels, strict=True))
    assert input_ids[0] == tok.bos_token_id


def test_image_placeholder_becomes_the_models_number_of_image_tokens(tok, spec):
    turns = [{"from": "human", "value": "<image>\nwhat color ?"}, {"from": "gpt", "value": "blue"}]
    input_ids, labels = LLAVA_V1.encode(turns, tok, spec, max_length=100)
    positions = [i for i, t in enumerate(input_ids) if t == spec.image_token_id]
    assert len(positions) == 5 and positions == list(range(positions[0], positions[0] + 5))
    assert all(labels[i] == IGNORE_INDEX for i in positions)
    # USER : then the image run, then the question
    assert input_ids[1:3] == ids(tok, "USER:") and positions[0] == 3


def test_text_only_record_has_no_image_tokens(tok, spec):
    turns = [{"from": "human", "value": "hello there"}, {"from": "gpt", "value": "hello"}]
    input_ids, labels = LLAVA_V1.encode(turns, tok, spec, max_length=100)
    assert spec.image_token_id not in input_ids
    assert [t for t, lab in zip(input_ids, labels, strict=True) if lab != IGNORE_INDEX] == [
        ids(tok, "hello")[0], tok.eos_token_id]


def test_truncation_cuts_text_after_the_image_never_inside_it(tok, spec):
    turns = [{"from": "human", "value": "<image>\nwhat shape is it ?"}, {"from": "gpt", "value": "circle"}]
    full, _ = LLAVA_V1.encode(turns, tok, spec, max_length=100)
    last_image = max(i for i, t in enumerate(full) if t == spec.image_token_id)
    cut, labels = LLAVA_V1.encode(turns, tok, spec, max_length=last_image + 2)
    assert cut == full[:last_image + 2] and cut.count(spec.image_token_id) == 5
    assert len(labels) == len(cut)
    with pytest.raises(DataError, match=r"rec 7: its 5 image tokens end at position 8, beyond data.max_length=6"):
        LLAVA_V1.encode(turns, tok, spec, max_length=6, where="rec 7")


def test_prompt_ends_where_the_answer_starts(tok, spec):
    turns = [{"from": "human", "value": "<image>\nwhat color ?"}, {"from": "gpt", "value": "blue"}]
    full, labels = LLAVA_V1.encode(turns, tok, spec, max_length=100)
    prompt = LLAVA_V1.prompt(turns[:1], tok, spec)
    assert full[:len(prompt)] == prompt and labels[len(prompt)] != IGNORE_INDEX


@pytest.mark.parametrize("record, message", [
    ({"id": "a", "image": "x.png", "conversations": [{"from": "human", "value": "no placeholder"},
                                                      {"from": "gpt", "value": "y"}]},
     r"record 0 \(id a\): 0 '<image>' placeholder\(s\) for 1 image\(s\)"),
    ({"id": "b", "conversations": [{"from": "robot", "value": "hi"}]}, r"\(id b\): conversations\[0\] must be"),
    ({"id": "c", "conversations": []}, r"\(id c\): field 'conversations' must be a non-empty list"),
])
def test_malformed_records_name_file_record_and_field(tmp_path, record, message):
    path = tmp_path / "bad.json"
    path.write_text(__import__("json").dumps([record]))
    with pytest.raises(DataError, match=message):
        list(read_records(path, validate_record))


def test_jsonl_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1, "conversations": [{"from": "human", "value": "x"}]}\n{broken\n')
    with pytest.raises(DataError, match=r"bad.jsonl line 2: not valid JSON"):
        list(read_records(path, validate_record))
