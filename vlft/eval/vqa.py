"""VQAv2 accuracy exactly as the official evaluation tool (GT-Vision-Lab/VQA, vqaEval.py) computes it.

The official tool changed its answer processing once, in commit a013f00 ("Fixed processing answers bug",
March 2021), and numbers published before and after differ. Both are kept, by name:

- ``2016`` (the default, and what vlft has always reported): the prediction always gets punctuation and
  digit/article/contraction normalisation; the ten human answers get punctuation normalisation only, and
  only when they disagree.
- ``2021`` (the official master since a013f00): every answer is first stripped of surrounding white space;
  when the ten human answers disagree, both sides get full normalisation; when they agree, neither does.

Quirks both keep on purpose, because published numbers depend on them:
- the period regex has a typo (``(?!<=\\d)`` is a look-ahead, not a look-behind) and is applied
  at most 32 times (``re.UNICODE`` passed as the ``count`` argument);
- accuracy per question is the mean over the ten leave-one-out subsets of min(#matches / 3, 1).
"""

from __future__ import annotations

import re
from collections import defaultdict

CONTRACTIONS = dict(pair.split(":") for pair in """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've couldnt've:couldn't've
didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've hadn'tve:hadn't've hasnt:hasn't havent:haven't
hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm
Ive:I've isnt:isn't itd:it'd itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've neednt:needn't
notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't
shed've:she'd've she'dve:she'd've she's:she's shouldve:should've shouldnt:shouldn't shouldnt've:shouldn't've
shouldn'tve:shouldn't've somebody'd:somebodyd somebodyd've:somebody'd've somebody'dve:somebody'd've
somebodyll:somebody'll somebodys:somebody's someoned:someone'd someoned've:someone'd've someone'dve:someone'd've
someonell:someone'll someones:someone's somethingd:something'd somethingd've:something'd've
something'dve:something'd've somethingll:something'll thats:that's thered:there'd thered've:there'd've
there'dve:there'd've therere:there're theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've
theyll:they'll theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've
werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've whens:when's whered:where'd wheres:where's
whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's whove:who've whyll:why'll
whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've wouldn'tve:wouldn't've
yall:y'all yall'll:y'all'll y'allll:y'all'll yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've
youd:you'd youd've:you'd've you'dve:you'd've youll:you'll youre:you're youve:you've
""".split())
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_SUB_COUNT = int(re.UNICODE)  # the official call passes re.UNICODE where `count` goes


def normalize_punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        # The test looks at the original text, the replacement works on the running result.
        if p + " " in text or " " + p in text or COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_SUB_COUNT)


def normalize_digits_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_prediction(answer: str) -> str:
    return normalize_digits_articles(normalize_punctuation(_clean(answer)))


PROTOCOLS = ("2016", "2021")
DEFAULT_PROTOCOL = "2016"


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Accuracy of one prediction in [0, 1].

    With several human answers: the official leave-one-out rule. With a single reference
    (datasets such as easy-VQA or GQA-style sets converted to this format) it is exact match
    after the official normalisation of both sides.
    """
    if len(answers) == 1:
        return float(normalize_prediction(prediction) == normalize_prediction(answers[0]))
    return vqa_accuracy_official(prediction, answers)


def mean_accuracy(predictions: list[str], answer_lists: list[list[str]]) -> float:
    """Mean VQA accuracy in percent (unrounded)."""
    if not predictions:
        raise ValueError("no predictions to score")
    return 100.0 * sum(vqa_accuracy(p, a) for p, a in zip(predictions, answer_lists, strict=True)) / len(predictions)


def score_official(annotations: list[dict], results: dict[int, str], ndigits: int = 2,
                   protocol: str = DEFAULT_PROTOCOL) -> dict:
    """The official tool's report: overall, perAnswerType, perQuestionType in percent, and the protocol used.

    ``annotations``: the `annotations` list of a v2_mscoco_*_annotations.json file.
    ``results``: question_id -> predicted answer, covering exactly those questions.
    """
    per_question, by_qtype, by_atype = [], defaultdict(list), defaultdict(list)
    for ann in annotations:
        acc = vqa_accuracy_official(results[ann["question_id"]], [a["answer"] for a in ann["answers"]], protocol)
        per_question.append(acc)
        by_qtype[ann["question_type"]].append(acc)
        by_atype[ann["answer_type"]].append(acc)

    def pct(values):
        return round(100.0 * sum(values) / len(values), ndigits)

    return {"overall": pct(per_question),
            "perAnswerType": {k: pct(v) for k, v in by_atype.items()},
            "perQuestionType": {k: pct(v) for k, v in by_qtype.items()},
            "protocol": protocol}


def vqa_accuracy_official(prediction: str, answers: list[str], protocol: str = DEFAULT_PROTOCOL) -> float:
    """The leave-one-out rule for any number of answers (no single-reference shortcut)."""
    if protocol == "2016":
        pred = normalize_prediction(prediction)
        gts = [normalize_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)
    elif protocol == "2021":
        pred, gts = _clean(prediction), [_clean(a) for a in answers]
        if len(set(gts)) > 1:
            pred, gts = normalize_prediction(pred), [normalize_prediction(a) for a in gts]
    else:
        raise ValueError(f"unknown VQAv2 protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    scores = [min(1.0, sum(1 for j, gt in enumerate(gts) if j != i and gt == pred) / 3) for i in range(len(gts))]
    return sum(scores) / len(scores)
