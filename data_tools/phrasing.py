"""Question phrasings per question type, in English and Chinese.

Questions get the variety (answers are kept to a few structured templates in
`data_tools.answers`). Every bank is a dict ``{"en": [...], "zh": [...]}``; templates with
``{p}`` take a pattern noun from `PATTERN_NOUNS`, ``{zone}`` a zone word, ``{nth}`` an ordinal.
`RECOGNITION_QUESTIONS` is what the evaluator asks. `question_as_written` puts a question typed
in chat ("whats wrong with this wafer", "defects?", "is it a tool problem?") into the form of these
banks before a model reads it, and `opening_question` reads the question that comes with a map as the
recognition question when it asks nothing more ("you see anything unusual?"); `is_acknowledgement`
tells a reply that asks nothing ("thanks!"), `defined_pattern` a question about what a pattern's name
means ("what does Edge-Loc mean?"). `as_typed_in_chat` goes the other way for training: a bank
question with the context, greeting or loose wording that chat adds (the rules take a sentence of
context off again, not context within the question's sentence, nor loose wording).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

_CJK = re.compile(r"[\u3400-\u9fff]")


def language_of(text: str) -> str:
    """'zh' when the text contains Chinese characters, else 'en' (the language a question is answered in)."""
    return "zh" if _CJK.search(text) else "en"


_SENTENCE_END = "?.!？。！"

#: "Is this wafer ok?", "Does the map look normal?", "这片晶圆正常吗？": whether the wafer as a whole is
#: fine (yes means no defect pattern), not whether one pattern is there.
_ASKS_IF_NORMAL = re.compile(
    r"\s*(?:is|does)\s+(?:(?:this|the|that|my)\s+(?:wafer(?:\s+map)?|map|one)|this|that|it)\s+"
    r"(?:look\s+|seem\s+)?(?:ok|okay|fine|good|normal|clean|healthy|alright|all\s+right)\b"
    r"|\s*(?:这片|这个|该|这张)?(?:晶圆图|晶圆|图|片子)?(?:是否正常|正常吗|正常么|正常不正常|正不正常)",
    re.IGNORECASE,
)
#: Where a clause may start: the text's start, or after a sentence mark, comma, colon or semicolon
#: ("Hey bot, is this wafer ok?", "Lot 42 came off CMP. Is it fine?").
_CLAUSE_START = re.compile(r"^|(?<=[,.!?:;，。！？：；])")


def asks_if_normal(question: str) -> bool:
    """True when `question` asks whether the wafer is fine as a whole ("Is this wafer ok?", "这片晶圆正常吗？"),
    also after a greeting or context ("Hey, is this one ok?")."""
    return any(_ASKS_IF_NORMAL.match(question, start.end()) for start in _CLAUSE_START.finditer(question))


#: What chat adds around a question and a model trained on the banks never saw: Slack emoji codes
#: (":eyes:") and a closing thanks ("… thanks!", "…谢谢").
_EMOJI_CODE = re.compile(r":[a-z0-9_+'-]+:", re.IGNORECASE)
_CLOSING_THANKS = re.compile(
    r"(?<=[\s,.!?，。！？])[\s,.!，。！]*(?:thanks(?: a lot)?|thank you|thx|ty|cheers|谢谢(?:你|您)?|多谢|谢啦|麻烦了)[\s!.。！~]*$",
    re.IGNORECASE,
)


def question_as_written(text: str) -> str:
    """`text` as the question banks write questions: Slack emoji codes and a closing thanks dropped,
    whitespace runs made single spaces, a lowercase first letter capitalised, and a question mark
    (``？`` in Chinese) added when the text has no closing punctuation. Chat users often type neither;
    the small model, trained on the banks' forms, misreads such questions far more often. A text that
    is nothing but a topic ("defects?", "yield", "causes?", "原因？") becomes the banks' first question
    on that topic in its language (`bare_topic_question`). Words and language are otherwise left as
    they are (a text that is nothing but thanks stays), except that sentences that only tell something
    around one question are dropped (`the_question_among_statements`)."""
    text = " ".join(_EMOJI_CODE.sub(" ", text).split()) or " ".join(text.split())
    text = _CLOSING_THANKS.sub("", text).rstrip(" ,;，、；") or text
    if not text:
        return text
    text = the_question_among_statements(text)
    if text[0].isascii() and text[0].islower():
        text = text[0].upper() + text[1:]
    if text[-1] not in _SENTENCE_END:
        text += "？" if language_of(text) == "zh" else "?"
    return bare_topic_question(text) or zone_count_question(text) or cause_guess_question(text) or text


#: Words for the three zones as people name them in a question, and the zone each stands for.
_ZONE_WORDS_EN = {"edge": "edge|rim|outer\\s+ring|periphery|outside", "center": "cent(?:er|re)|core|inner\\s+part",
                  "middle": "middle|mid-radius|mid\\s+radius"}
_ZONE_WORDS_ZH = {"edge": "边缘|外圈|边上|最外圈", "center": "中心|中央|正中", "middle": "中间|中部|半径中间"}
#: "what's the failure rate at the edge?", "how many fail in the center", "边缘失效多少": the failing dies of
#: one zone, which the banks ask as "How many dies fail in the edge zone?" (the small model answered the
#: first with the wafer's die count).
_ZONE_COUNT = {
    zone: re.compile(
        r"(?:and\s+|what\s+about\s+)?(?:(?:what(?:'s|\s+is)\s+)?the\s+)?(?:(?:failure|fail|failing|defect)\s+rate"
        r"|how\s+many\s+(?:dies\s+)?(?:fail(?:ed|ing)?(?:\s+dies)?|failures|bad(?:\s+dies)?|are\s+(?:failing|bad))"
        r"|(?:failures|fails|failing\s+dies))(?:\s+are\s+there)?\s+(?:at|in|on|near|around|along)\s+the\s+"
        rf"(?:{_ZONE_WORDS_EN[zone]})(?:\s+(?:zone|region|area|of\s+the\s+wafer))?"
        rf"|(?:那)?(?:{_ZONE_WORDS_ZH[zone]})(?:区|区域|部分)?(?:的)?(?:失效|坏)(?:了|的)?(?:率|比例|多少颗?|几颗|有多少颗?|是多少)+",
        re.IGNORECASE,
    )
    for zone in ("edge", "center", "middle")
}


def zone_count_question(text: str) -> str | None:
    """The banks' question on one zone's failing dies when `text` asks only that ("what's the failure rate
    at the edge?", "how many fail in the centre", "边缘失效多少"), also after clauses that only tell
    something; None otherwise."""
    bare = text.strip().rstrip(_SENTENCE_END + " ")
    asked = _asked_clause(bare)
    language = language_of(bare)
    if text.strip() in _BANK_ZONE_QUESTIONS:
        return None  # the banks' own wording: the model was trained on it
    for zone, pattern in _ZONE_COUNT.items():
        if pattern.fullmatch(asked):
            return COUNT_QUESTIONS["zone"][language][0].format(zone=ZONE_NAMES[language][zone][0])
    return None


#: Processes, tools and parts a fab engineer may suspect ("is it a CMP issue?", "是机台问题吗？").
_SUSPECTS_EN = (
    r"tools?|process(?:es|ing)?|equipment|machines?|chambers?|recipes?|litho(?:graphy)?|photo|exposure|resist|focus|dose"
    r"|etch(?:er|ing)?|cmp|polish(?:ing|er)?|pads?|slurry|deposition|cvd|pvd|ald|implant(?:er|ation)?|anneal(?:ing)?|rta"
    r"|clean(?:ing)?|wet|diffusion|furnace|plasma|heaters?|chucks?|handling|robots?|probe(?:r|\s+cards?)?|testers?"
    r"|particles?|contamination|fab|upstream"
)
_SUSPECTS_ZH = (
    "机台|设备|工艺|工序|腔体|腔室|配方|光刻|曝光|刻蚀|蚀刻|CMP|研磨|抛光|沉积|注入|退火|清洗|扩散|炉管|等离子|加热|卡盘|搬运"
    "|机械手|探针|测试|颗粒|污染|前道|上游"
)
#: Pattern names in a question: "is it a CMP scratch?" asks whether there is a scratch.
_NAMES_A_PATTERN = re.compile(
    r"\b(?:cent(?:er|re)|donuts?|doughnuts?|rings?|edge|loc|local\w*|near[\s-]?full|scratch\w*|random\w*)\b"
    r"|中心|环|甜甜圈|边缘|局部|近全|满片|划|刮|随机",
    re.IGNORECASE,
)
#: "Is it a tool problem?", "could this be litho?", "is this from the CMP?", "是不是工艺问题？", "会不会是机台造成的": a
#: guess at the cause, which the cause bank answers (the small model read such questions as yes/no questions
#: about a pattern: "is it a tool problem?" got "No, there is no Center pattern.").
_CAUSE_GUESS = re.compile(
    r"(?:is|was|could|can|might|may|would)\s+(?:it|this|that|these|they)\s+(?:be\s+)?(?:(?:from|due\s+to|caused\s+by"
    r"|related\s+to|because\s+of)\s+)?(?:a|an|the|our|my|some)?\s*(?:\w+[\s-])?"
    rf"(?:{_SUSPECTS_EN})\b[\w\s-]*"
    rf"|(?:这|这个|这片|它)?(?:是|是不是|会不会是|会是|可能是|有没有可能是)(?:{_SUSPECTS_ZH})\S*?(?:问题|造成的|引起的|导致的|的问题|的)?(?:吗|么|吧|呢)?",
    re.IGNORECASE,
)


def cause_guess_question(text: str) -> str | None:
    """The cause bank's first question when `text` guesses at a cause without naming a pattern ("Is it a tool
    problem?", "could this be litho?", "是机台问题吗？"), also in a text whose other clauses only tell
    something ("yield dropped on lot 7, is it the etcher?"); None otherwise. The answer names the likely causes
    of the patterns found, the suspected one among them when it is one."""
    bare = text.strip().rstrip(_SENTENCE_END + " ")
    asked = _asked_clause(bare)
    if _NAMES_A_PATTERN.search(asked) or not _CAUSE_GUESS.fullmatch(asked):
        return None
    return CAUSE_QUESTIONS[language_of(bare)][0]


#: Words that only acknowledge an answer ("ok thanks!", "got it", "好的，谢谢"): `is_acknowledgement`.
_ACK_WORDS = (
    r"ok(?:ay)?|k|kk|got\s+it|thanks?(?:\s+(?:a\s+lot|so\s+much|again))?|thank\s+you(?:\s+(?:very|so)\s+much)?|thx|ty"
    r"|cheers|great|perfect|nice|cool|awesome|excellent|makes\s+sense|understood|noted|will\s+do|sounds\s+good"
    r"|roger(?:\s+that)?|alright|all\s+right|good|very\s+helpful|helpful|that\s+helps|appreciated?|np"
    r"|好的|好|谢谢(?:你|您|啦)?|多谢|谢啦|感谢|明白了?|收到|懂了|了解|知道了|行|嗯|辛苦了"
)
_ACKNOWLEDGEMENT = re.compile(rf"(?:{_ACK_WORDS})(?:[\s,.!~、，。！～]*(?:{_ACK_WORDS}))*", re.IGNORECASE)


def is_acknowledgement(text: str) -> bool:
    """True when `text` only acknowledges an answer: "thanks!", "ok got it", "great, thank you :pray:",
    "好的，谢谢", or nothing but Slack emoji codes (":+1:"). Such a reply in a thread asks nothing."""
    words = _EMOJI_CODE.sub(" ", text).strip(" \t\n.,!~。，！～")  # "ok?" may ask something: not stripped
    if not words:
        return bool(_EMOJI_CODE.search(text))
    return bool(_ACKNOWLEDGEMENT.fullmatch(words))


#: "What does Edge-Loc mean?", "what's a donut?", "define scratch", "EL stands for?", "tell me more about the
#: edge loc", "什么是边缘环？", "划痕是什么意思", "介绍一下边缘环": what a pattern's name means (`defined_pattern`),
#: which needs no map. "What is the X" asks about this wafer's X and is left to the model, unless it asks what
#: the X means.
_DEFINITION_EN = re.compile(
    r"(?:(?:what(?:'s|\s+is)\s+(?:meant\s+by|the\s+meaning\s+of)|define|meaning\s+of)\s+(?:an?\s+|the\s+)?"
    r"(?P<define>.+?)"
    r"|what\s+(?:does|do)\s+(?:an?\s+|the\s+)?(?P<means>.+?)\s+(?:mean|stand\s+for)"
    r"|what(?:'s|\s+is|\s+are)\s+(?:an?\s+)?(?!the\s)(?P<is>.+?)"
    r"|(?P<stands>.+?)\s+(?:means|stands\s+for)"
    r"|(?:(?:can|could)\s+you\s+|please\s+)?(?:tell\s+(?:me|us)\s+(?:more\s+)?about|explain|more\s+about)"
    r"\s+(?:an?\s+|the\s+)?(?P<about>.+?))"
    r"(?:\s+(?:pattern|defect|signature)s?)?(?:\s+(?:on|in)\s+this\s+(?:wafer|map))?(?:,?\s+please)?\s*[?？.!]*",
    re.IGNORECASE,
)
_DEFINITION_ZH = re.compile(
    r"(?:请问)?(?:(?:什么是|啥是|什么叫)(?P<what>.+?)|(?P<name>.+?)(?:是什么意思|是啥意思|指的是什么|是指什么|指什么|是什么|是啥)"
    r"|(?:请|麻烦)?(?:(?:再)?介绍一?下|讲讲|说说|解释一?下)(?P<about>.+?))"
    r"[？?。！!]*"
)
_DEFINITION_SUFFIXES_ZH = ("缺陷", "模式", "图案", "图形", "型")


def defined_pattern(question: str) -> str | None:
    """The pattern key when `question` asks only what one pattern's name means or for more about it ("What
    does Edge-Loc mean?", "what is a donut pattern?", "tell me more about the scratch", "什么是划痕？",
    "Edge-Ring是什么意思", "介绍一下边缘环"), else None ("What is the yield?",
    "这片是什么缺陷？", "what is wrong?")."""
    from data_tools.taxonomy import pattern_key

    text = _CLOSING_THANKS.sub("", _EMOJI_CODE.sub(" ", question)).strip()
    match = (_DEFINITION_ZH if language_of(text) == "zh" else _DEFINITION_EN).fullmatch(text)
    if match is None:
        return None
    name = next(group for group in match.groups() if group is not None).strip()
    candidates = [name, name.removesuffix("s"), name.removesuffix("es")]
    candidates += [name.removesuffix(suffix) for suffix in _DEFINITION_SUFFIXES_ZH]
    for candidate in candidates:
        try:
            return pattern_key(candidate)
        except ValueError:
            continue
    return None


#: Where a message splits into sentences: after a Chinese sentence mark, or after an English one that
#: a space follows (so "3.5 %" and "ETCH-04." at the end stay whole).
_SENTENCE_BREAK = re.compile(r"(?<=[。！？])|(?<=[.!?])(?=\s)")
#: A sentence that asks for something without a question mark ("Please list the causes.", "请给出良率。"):
#: a message with one of these asks more than its question sentence.
_REQUEST_SENTENCE = re.compile(
    r"\s*(?:please|pls|tell|give|show|list|explain|describe|classify|identify|diagnose|check|look|analy[sz]e|count"
    r"|what|which|where|why|how|who|when|can|could|would|should|is|are|do|does|did|any)\b"
    r"|\s*(?:请|帮|麻烦|告诉|给|列出|说明|解释|分析|识别|看看|看一下|检查|统计)",
    re.IGNORECASE,
)


def the_question_among_statements(text: str) -> str:
    """The one question in a message whose other sentences only tell something: "What is wrong with this
    wafer? We saw a yield drop on ETCH-04 yesterday." asks "What is wrong with this wafer?"; "Lot 7 just
    finished final test. What pattern is this?" and "这是A123批次的。这片是什么缺陷" likewise. The model answers
    from the map, the thread and the measured facts, never from such context, and read it as another
    question more often than not (the context after the question was answered right on 62 % of test maps,
    `benchmarks/chat_phrasings.py`). The text is returned as it is when it holds no other sentence, more
    than one question, or a sentence that asks without a question mark ("Please list the causes."). A last
    sentence with no closing mark is the question when no other sentence is one ("Lot 7. what pattern is
    this")."""
    sentences = [s.strip() for s in _SENTENCE_BREAK.split(text) if s.strip()]
    if len(sentences) < 2:
        return text
    questions = [s for s in sentences if s[-1] in "?？"]
    if not questions and sentences[-1][-1] not in _SENTENCE_END:
        questions = [sentences[-1]]
    if len(questions) != 1:
        return text
    if any(_REQUEST_SENTENCE.match(s) for s in sentences if s is not questions[0]):
        return text
    return questions[0]


def bare_topic_question(text: str) -> str | None:
    """The banks' first question on the topic `text` names when it names nothing else, also after a
    greeting: "Defects?", "the yield", "what is the failure rate?", "next steps?", "hi, defects?", "良率？",
    "原因", "这片是什么缺陷？", "坏了多少颗？"; and a bare request to look at the wafer, which asks what it
    shows ("check this wafer please", "帮我看看这片晶圆", "识别一下"). Such short questions are common in chat,
    and the small model read many of them as another question ("defects?" got the yield, "causes?" a
    zone's count, "原因？" the patterns, "这片是什么缺陷？" and "麻烦看下这片" the yield, "check this wafer
    please" the good dies, "看一下这张图" a mix of places and causes). The topic may also come after "any"
    ("any defects?") or close a text whose other clauses only tell something ("wafer map from lot 42, any
    pattern?", "这是A批次的，良率？"). None for any other text, a bare pattern name included
    ("Scratch?" may ask whether there is one) and a bare "why?" (what it asks depends on the thread)."""
    bare = text.strip().rstrip(_SENTENCE_END + " ")
    greeting = _GREETING.match(bare)
    bare = bare[greeting.end():] if greeting else bare
    if _LOOK_REQUEST.fullmatch(bare) or _ASKS_IF_SURE.fullmatch(bare):
        return RECOGNITION_QUESTIONS[language_of(bare)][0]
    if _ASKS_HOW_BAD.fullmatch(bare):
        return COUNT_QUESTIONS["summary"][language_of(bare)][0]
    asked = _asked_clause(bare)
    for pattern, bank in _BARE_TOPICS:
        if pattern.fullmatch(bare) or pattern.fullmatch(asked):
            return bank[language_of(bare)][0]
    return None


def _asked_clause(text: str) -> str:
    """The last clause of `text` when the clauses before it only tell something ("wafer map from lot 42,
    any pattern?" asks "any pattern?"), else `text` itself."""
    *context, last_clause = _CLAUSE_BREAK.split(text)
    if context and not any(_REQUEST_SENTENCE.match(clause) or clause[-1:] in "?？" for clause in context):
        return last_clause
    return text


#: `opening_question` reads a question as asking what the map shows only up to this length and in one
#: sentence ("lot 3 came back from probe with low yield, what happened here?" has 63 characters).
OPENING_QUESTION_MAX_CHARS = 120


def opening_question(text: str) -> str:
    """The question that comes with a wafer map, as the model reads it: `question_as_written`, and the
    banks' first recognition question when it asks about nothing but the wafer as a whole: "you see
    anything unusual?", "what's the story with this one?", "lot 3 came back from probe with low yield, what
    happened here?", "你觉得这片是什么问题", "这片晶圆怎么回事". Someone who posts a map and asks that wants to
    know what it shows, and the small model answered many such wordings, which it never saw, with the
    yield or with places. A question that names anything the model answers besides the patterns is
    left as the model was trained to read it: numbers, places, causes, checks, a pattern by name
    (`_ASKS_ANOTHER_TOPIC`), or whether the wafer is fine (`asks_if_normal`). The banks' own questions
    stay as they are: each one outside the recognition bank names such a topic (a test checks), so this
    only changes wordings the banks never use. A text of several sentences or longer than
    `OPENING_QUESTION_MAX_CHARS` is left as written too."""
    written = question_as_written(text)
    language = language_of(written)
    if not written or written in RECOGNITION_QUESTIONS[language] or asks_if_normal(written):
        return written
    if len(written) > OPENING_QUESTION_MAX_CHARS or sum(1 for part in _SENTENCE_BREAK.split(written) if part.strip()) > 1:
        return written  # a long text or several sentences may ask anything: read as written
    if _ASKS_ANOTHER_TOPIC.search(_asked_clause(written.rstrip(_SENTENCE_END))):
        return written
    return RECOGNITION_QUESTIONS[language][0]


Bank = Mapping[str, Sequence[str]]

RECOGNITION_QUESTIONS: dict[str, list[str]] = {
    "en": [
        "What defects does this wafer show?",
        "What defect patterns are on this wafer map?",
        "Which defect patterns can you see here?",
        "Classify the defect pattern(s) on this wafer.",
        "What's wrong with this wafer?",
        "Can you tell me what failure pattern this is?",
        "Identify the defect types on this wafer map.",
        "What kind of failure signature does this map have?",
        "Is this wafer normal, or does it have defect patterns?",
        "Take a look at this wafer map - which patterns do you see?",
        "Which of the standard defect patterns are present?",
        "What pattern is this?",
        "Diagnose this wafer map for me.",
        "What does the fail map show?",
        "Any defect pattern on this one?",
    ],
    "zh": [
        "这片晶圆有哪些缺陷？",
        "这张晶圆图上有什么缺陷模式？",
        "请识别这片晶圆的缺陷类型。",
        "帮我看看这片晶圆是什么缺陷。",
        "这是什么失效模式？",
        "这张晶圆图显示了哪些缺陷模式？",
        "这片晶圆正常吗？有没有缺陷模式？",
        "请对这张晶圆图做缺陷分类。",
        "这个晶圆的失效分布属于哪种类型？",
        "图里能看到哪些缺陷模式？",
        "分析一下这张晶圆图。",
        "这片晶圆有问题吗？",
        "这张 wafer map 是什么缺陷？",
    ],
}

LOCATION_QUESTIONS: dict[str, list[str]] = {
    "en": [
        "Where are the defects on this wafer?",
        "Where do the failing dies sit?",
        "Which part of the wafer is affected?",
        "Describe where the failures are located.",
        "Where on the wafer are the defect patterns?",
        "Can you point out where the problem areas are?",
        "Where is the damage concentrated?",
        "Where are the failing dies?",
        "Where are the failures concentrated?",
    ],
    "zh": [
        "缺陷在晶圆的什么位置？",
        "失效芯片集中在哪里？",
        "晶圆的哪个区域受影响？",
        "请描述失效的位置。",
        "这些缺陷模式分别在哪里？",
        "问题区域在哪儿？",
        "失效的芯片在哪里？",
        "坏的晶粒分布在哪些位置？",
    ],
}

CAUSE_QUESTIONS: dict[str, list[str]] = {
    "en": [
        "What could cause the defects on this wafer?",
        "What process issues might explain this map?",
        "What's the likely root cause here?",
        "Why would a wafer fail like this?",
        "Which process steps should I suspect for this map?",
        "What usually causes a failure signature like this?",
        "Any idea what went wrong in the process?",
    ],
    "zh": [
        "这片晶圆的缺陷可能是什么原因造成的？",
        "这种失效分布可能是哪些工艺问题引起的？",
        "可能的根本原因是什么？",
        "为什么晶圆会这样失效？",
        "应该怀疑哪些工序？",
        "这种图案一般是什么原因？",
    ],
}

CHECK_QUESTIONS: dict[str, list[str]] = {
    "en": [
        "What should I check for this wafer?",
        "What should we look at first?",
        "How should I troubleshoot this map?",
        "What would you check on the tools for this?",
        "What actions do you recommend?",
        "Where should the investigation start?",
    ],
    "zh": [
        "针对这片晶圆应该检查什么？",
        "我们应该先查什么？",
        "这张图该怎么排查？",
        "建议采取哪些措施？",
        "调查应该从哪里开始？",
    ],
}

#: Count questions per topic (see data_tools.answers.COUNT_TOPICS); zone questions take {zone}.
COUNT_QUESTIONS: dict[str, dict[str, list[str]]] = {
    "yield": {
        "en": [
            "What's the yield?",
            "What is the yield of this wafer?",
            "Yield?",
            "What percentage of dies pass?",
            "Can you give me the die yield?",
            "How good is the yield on this one?",
            "And the yield?",
            "yield?",
        ],
        "zh": ["良率是多少？", "这片的良率多少？", "合格率是多少？", "良品率是多少？", "帮我算一下良率。",
               "这片晶圆的良率是多少？", "良率有多少？", "良率？"],
    },
    "failing": {
        "en": [
            "How many dies fail?",
            "How many failing dies are there?",
            "Count the bad dies.",
            "How many dies are defective?",
            "What's the number of failing dies?",
            "And how many fail?",
            "How many bad dies?",
            "How many dies failed test?",
            "What is the failure rate?",
        ],
        "zh": ["有多少颗芯片失效？", "失效芯片有几颗？", "坏的芯片有多少？", "数一下失效的芯片。", "有多少个失效芯片？",
               "那失效的有多少？", "不良芯片有几个？", "坏了多少颗？"],
    },
    "dies": {
        "en": ["How many dies are on this wafer?", "What's the total die count?", "How many dies in total?",
               "How many dies does the wafer have?", "And the total number of dies?"],
        "zh": ["这片晶圆一共有多少颗芯片？", "总共有几颗芯片？", "芯片总数是多少？", "一共多少个芯片？"],
    },
    "good": {
        "en": ["How many good dies are there?", "How many dies pass?", "Number of good dies?", "How many dies are good?",
               "And how many are good?", "How many dies passed?", "Count the good dies.", "How many working dies?"],
        "zh": ["有多少颗良品？", "合格的芯片有几颗？", "良品数量是多少？", "有多少个良品芯片？", "那良品有多少？",
               "好的芯片有几颗？", "通过测试的芯片有多少？"],
    },
    "zone": {
        "en": [
            "How many dies fail in the {zone} zone?",
            "How many failures are in the {zone} zone?",
            "What does the {zone} zone look like in numbers?",
            "How many failing dies in the {zone}?",
        ],
        "zh": ["{zone}有多少颗失效？", "{zone}的失效芯片有几颗？", "{zone}的失效情况怎么样？"],
    },
    "clusters": {
        "en": [
            "How many clusters of failing dies are there?",
            "How many clusters are there?",
            "How many clusters?",
            "How big is the largest cluster?",
            "Do the failures form clusters?",
            "Are the failing dies clustered?",
        ],
        "zh": ["失效芯片形成了几个团？", "有几个失效团？", "最大的失效团有多大？", "失效是成团分布的吗？", "失效芯片成团吗？"],
    },
    "summary": {
        "en": ["Give me the numbers for this wafer.", "Summarise the die counts.", "Quick stats please."],
        "zh": ["给我这片晶圆的数据。", "总结一下芯片数量。", "简单统计一下。"],
    },
}

ZONE_NAMES = {
    "en": {"center": ["centre", "center", "central"], "middle": ["middle", "mid-radius"], "edge": ["edge", "outer"]},
    "zh": {"center": ["中心区"], "middle": ["中间区"], "edge": ["边缘区", "外圈"]},
}

#: Every zone question of the banks, with every zone word (`zone_count_question` leaves them as they are).
_BANK_ZONE_QUESTIONS = frozenset(
    template.format(zone=word)
    for language, templates in COUNT_QUESTIONS["zone"].items()
    for template in templates
    for words in ZONE_NAMES[language].values()
    for word in words
)

#: How people name a pattern in a question (the answer always uses the canonical name).
PATTERN_NOUNS: dict[str, dict[str, list[str]]] = {
    "Center": {"en": ["a center defect", "a Center pattern", "a centre cluster", "failures at the center"],
               "zh": ["中心缺陷", "中心型缺陷", "中心失效"]},
    "Donut": {"en": ["a donut", "a Donut pattern", "a ring (donut) pattern", "a doughnut pattern"],
              "zh": ["环形缺陷", "甜甜圈缺陷", "圆环状失效"]},
    "Edge_Loc": {"en": ["an Edge-Loc pattern", "an edge-local defect", "a local cluster on the edge", "edge loc"],
                 "zh": ["边缘局部缺陷", "局部边缘缺陷", "边缘局部型缺陷"]},
    "Edge_Ring": {"en": ["an edge ring", "an Edge-Ring pattern", "a ring of failures along the edge"],
                  "zh": ["边缘环缺陷", "外环失效", "边缘环形缺陷"]},
    "Loc": {"en": ["a Loc pattern", "a local cluster", "a localized defect", "a local defect"],
            "zh": ["局部缺陷", "局部型缺陷", "局部失效团"]},
    "Near_Full": {"en": ["a near-full failure", "a Near-full pattern", "an almost full-wafer failure"],
                  "zh": ["近全片失效", "近全片缺陷", "几乎全部失效"]},
    "Scratch": {"en": ["a scratch", "any scratches", "a Scratch pattern", "a scratch line"],
                "zh": ["划痕", "划伤", "刮痕"]},
    "Random": {"en": ["a random pattern", "random defects", "a Random pattern", "randomly scattered failures"],
               "zh": ["随机缺陷", "随机分布的失效", "随机型缺陷"]},
}

YESNO_QUESTIONS: dict[str, list[str]] = {
    "en": [
        "Is there {p} on this wafer?",
        "Do you see {p}?",
        "Does this map have {p}?",
        "Any sign of {p}?",
        "Can you spot {p} here?",
        "Is {p} present?",
        "Is it {p}?",
    ],
    "zh": ["有{p}吗？", "这片晶圆上有{p}吗？", "是否存在{p}？", "能看到{p}吗？", "图上有没有{p}？", "是{p}吗？"],
}

# ---------------------------------------------------------------- follow-ups (rely on earlier turns)

FOLLOW_CAUSE: dict[str, list[str]] = {
    "en": ["What could cause it?", "What could cause that?", "Why would that happen?", "Any idea what causes this?",
           "What's the likely cause?", "And the root cause?"],
    "zh": ["可能是什么原因？", "原因是什么？", "为什么会这样？", "一般是什么引起的？", "根本原因可能是什么？"],
}
FOLLOW_CAUSE_PLURAL: dict[str, list[str]] = {
    "en": ["What could cause them?", "What could cause these?", "Why would those happen?", "What are the likely causes?"],
    "zh": ["这些可能是什么原因？", "它们的原因是什么？", "这些一般是什么引起的？"],
}
FOLLOW_LOCATION: dict[str, list[str]] = {
    "en": ["Where is it?", "Where exactly?", "Where on the wafer?", "Which part of the wafer?"],
    "zh": ["在哪里？", "具体位置在哪？", "在晶圆的哪个位置？", "在哪个区域？"],
}
FOLLOW_LOCATION_PLURAL: dict[str, list[str]] = {
    "en": ["Where are they?", "Where exactly are they?", "Where does each one sit?"],
    "zh": ["它们在哪里？", "分别在什么位置？", "各自在哪个区域？"],
}
FOLLOW_CHECK: dict[str, list[str]] = {
    "en": ["What should I check?", "What should we check first?", "So what do I look at?", "Next steps?"],
    "zh": ["应该检查什么？", "先查什么？", "那我该看哪些？", "下一步怎么做？"],
}
FOLLOW_YIELD: dict[str, list[str]] = {
    "en": ["What about the yield?", "And the yield?", "How's the yield then?", "And yield?"],
    "zh": ["那良率呢？", "良率怎么样？", "良率呢？", "那良率是多少？"],
}
FOLLOW_ZONE: dict[str, list[str]] = {
    "en": ["And in the {zone} zone?", "What about the {zone} zone?", "And the {zone}?"],
    "zh": ["那{zone}呢？", "{zone}呢？", "{zone}的情况呢？"],
}
FOLLOW_WHAT_THEN: dict[str, list[str]] = {
    "en": ["So what is there?", "Then what does it show?", "What pattern is it then?", "OK, what is on it?"],
    "zh": ["那有什么缺陷？", "那是什么缺陷？", "那它是什么模式？", "那图上有什么？"],
}

ORDINALS = {
    "en": ["first", "second", "third", "fourth"],
    "zh": ["第一个", "第二个", "第三个", "第四个"],
}
#: Ask about the n-th pattern of the previous answer ({nth} is an ordinal).
NTH_CAUSE: dict[str, list[str]] = {
    "en": ["What could cause the {nth} one?", "What causes the {nth} pattern?", "Why would the {nth} one happen?"],
    "zh": ["{nth}是什么原因造成的？", "{nth}缺陷的原因是什么？", "{nth}一般是怎么引起的？"],
}
NTH_LOCATION: dict[str, list[str]] = {
    "en": ["Where is the {nth} one?", "Where does the {nth} pattern sit?"],
    "zh": ["{nth}在哪里？", "{nth}缺陷在什么位置？"],
}
NTH_CHECK: dict[str, list[str]] = {
    "en": ["What should I check for the {nth} one?", "How do I chase the {nth} pattern?"],
    "zh": ["{nth}应该检查什么？", "{nth}缺陷该怎么排查？"],
}
#: "And the second one?" — same question as before, about the next pattern.
FOLLOW_NEXT: dict[str, list[str]] = {
    "en": ["And the {nth} one?", "What about the {nth} one?", "And the {nth}?", "Same for the {nth} one?"],
    "zh": ["那{nth}呢？", "{nth}呢？", "那{nth}怎么样？"],
}


#: What may stand before an English topic word without asking anything more: "the yield", "what is the failure rate?".
_EN_WHAT_IS = r"(?:any\s+|(?:what(?:'s|\s+is|\s+are)\s+)?the\s+)?"
#: What may stand before a Chinese topic word without asking anything more: "这片是什么缺陷？", "这是什么缺陷？",
#: "这片晶圆有什么缺陷？", "这片良率？" (a short form the small model answered with the yield or with places).
_ZH_THIS = "(?:这|这个|这片|这张|该)?(?:晶圆图|晶圆|图|片子)?(?:是|有)?(?:什么|哪种|哪些|哪类|哪一种|啥)?"
#: A greeting before the topic ("hi, defects?", "早上好，这片是什么缺陷？"), dropped when the rest is a topic.
_GREETING = re.compile(
    r"(?:hi|hello|hey|good\s+morning|morning|good\s+afternoon|早上好|上午好|下午好|晚上好|你好|您好|嗨|哈喽|早)"
    r"(?:\s+(?:team|all|bot|there|everyone))?[\s,，!！.。~～]+",
    re.IGNORECASE,
)
#: A request to look at the wafer and nothing more ("check this wafer please", "帮我看看这片晶圆", "分析一下"): it asks
#: what the wafer shows.
_LOOK_REQUEST = re.compile(
    r"(?:(?:can|could|would)\s+you\s+)?(?:please\s+)?"
    r"(?:(?:take|have)\s+a\s+look(?:\s+at\s+(?:(?:this|that|the|my)(?:\s+(?:wafer(?:\s+map)?|map|one|image))?|it))?|(?:check|look\s+at|analy[sz]e|diagnose|classify|inspect)\s+(?:(?:this|that|the|my)(?:\s+(?:wafer(?:\s+map)?|map|one|image))?|it))"
    r"(?:\s+(?:please|pls|for\s+me))?"
    r"|(?:请|麻烦)?(?:帮忙|帮我)?(?:看看|看一下|看一看|看下|瞧瞧|分析一下|分析下|分析|识别一下|识别|诊断一下|诊断|检查一下|查一下|判断一下)"
    r"(?:这|这个|这片|这张|该)?(?:晶圆图|晶圆|图|片子|片)?(?:吧|呗)?",
    re.IGNORECASE,
)
#: Words by which a question asks about more than what the wafer shows: counts and yield, places, causes,
#: checks, a pattern by name, the n-th pattern of an answer (`opening_question`). "Failure pattern", "good
#: morning" and the like do not count.
_ASKS_ANOTHER_TOPIC = re.compile(
    r"\b(?:yields?|pass(?:es|ed|ing)?|good(?!\s+(?:morning|afternoon|evening|day))|working|fail(?:s|ed|ing)?"
    r"|failures?(?!\s+(?:patterns?|signatures?|modes?|maps?|types?))|bad|defective|counts?|numbers?|stats|statistics"
    r"|how\s+(?:many|much|big|large|wide|long)|percent(?:age)?|rate|total|dies?|chips?"
    r"|where|locat\w*|positions?|parts?|areas?|zones?|regions?|sectors?|sides?|edges?|rims?|cent(?:er|re)s?|central"
    r"|middle|outer|inner|cluster\w*|concentrated"
    r"|caus\w*|why|reasons?|root|process\w*|steps?|suspect\w*|tools?|equipment|chambers?|recipes?"
    r"|check\w*|troubleshoot\w*|investigat\w*|recommend\w*|suggest\w*|actions?|next|fix\w*|should|prevent\w*|chase"
    r"|do\s+I\s+look|first|second|third|fourth|last|other"
    r"|donuts?|doughnuts?|rings?|loc|local\w*|near[\s-]?full|full|scratch\w*|random\w*|scattered)\b"
    r"|良|合格|成品|通过|好的芯片|好芯片|失效|坏|多少|几颗|几个|数量|总数|数据|统计|比例|百分|位置|哪里|哪儿|在哪|区域|区"
    r"|部位|边|外圈|外环|中心|中间|团|集中|原因|为什么|为啥|怎么会|根因|导致|造成|引起|工艺|工序|机台|设备|检查|排查|先查"
    r"|查什么|看哪|建议|措施|怎么办|怎么做|下一步|处理|调查|怀疑|第[一二三四]|环|甜甜圈|局部|划|刮|随机|近全|全片",
    re.IGNORECASE,
)
#: "Are you sure?", "how confident are you?", "确定吗？": answered with the patterns again (the small model
#: answered "are you sure?" with the causes).
_ASKS_IF_SURE = re.compile(
    r"(?:are\s+you\s+(?:sure|certain|confident)(?:\s+about\s+(?:it|that|this))?|you\s+sure|sure"
    r"|how\s+(?:sure|confident|certain)\s+are\s+you|how\s+reliable\s+is\s+(?:that|this|it))"
    r"|(?:你)?(?:确定|肯定)(?:吗|么|嘛)|(?:你)?(?:确不确定|有把握吗|有多大把握|准吗|准不准)",
    re.IGNORECASE,
)
#: "How bad is it?", "is it serious?", "is the donut serious?", "严重吗？", "划痕严重吗": answered with the wafer's
#: numbers (failing dies, yield; the small model answered "is the donut serious?" with the good dies alone).
_ASKS_HOW_BAD = re.compile(
    r"(?:how\s+(?:bad|serious|severe)\s+(?:is|are)\s+(?:it|this|that|this\s+wafer|the\s+[a-z][\w\s-]{0,24}?)"
    r"|(?:is|are)\s+(?:it|this|that|this\s+wafer|the\s+[a-z][\w\s-]{0,24}?)\s+"
    r"(?:serious|bad|severe|critical|a\s+big\s+deal|a\s+problem))"
    r"|(?:这|这个|这片|这片晶圆|[\u4e00-\u9fffA-Za-z-]{1,8})?(?:严重吗|严不严重|有多严重|问题大吗|影响大吗)",
    re.IGNORECASE,
)
#: Where a topic may follow what only tells something, as in "wafer map from lot 42, any pattern?".
_CLAUSE_BREAK = re.compile(r"\s*[,，;；:：]\s*")
#: One-word topics and the bank whose first question they stand for (`bare_topic_question`).
_BARE_TOPICS: tuple[tuple[re.Pattern[str], Bank], ...] = tuple(
    (re.compile(f"{_EN_WHAT_IS}{_ZH_THIS}(?:{words})(?:\\s+(?:please|pls))?", re.IGNORECASE), bank)
    for words, bank in (
        (r"defects?|defect\s+(?:patterns?|types?|class(?:es)?)|(?:failure|fail)\s+(?:patterns?|signatures?|modes?)"
         r"|patterns?|signature|classification|diagnosis|缺陷|缺陷模式|缺陷类型|缺陷分类|失效模式|模式|分类",
         RECOGNITION_QUESTIONS),
        (r"where|locations?|positions?|(?:defect|failure)\s+locations?|位置|在哪|在哪里|在哪儿|缺陷位置|失效位置",
         LOCATION_QUESTIONS),
        (r"(?:(?:likely|root|possible|probable)\s+)?causes?|原因|根因|根本原因|可能原因", CAUSE_QUESTIONS),
        (r"next\s+steps?|actions?|what\s+to\s+check|checks?|recommendations?|suggestions?|troubleshooting"
         r"|建议|下一步|措施|怎么办|怎么查|排查|检查什么", CHECK_QUESTIONS),
        (r"(?:die\s+|wafer\s+)?yield|良率|良品率|合格率|成品率", COUNT_QUESTIONS["yield"]),
        (r"(?:failing|failed|bad|defective)\s+dies|(?:fail|failure)\s+(?:count|rate)|失效数|失效数量|失效芯片|不良芯片|坏芯片"
         r"|(?:坏|失效|不良)了?(?:多少|几)(?:颗|个)?",
         COUNT_QUESTIONS["failing"]),
        (r"(?:good|passing)\s+dies|良品数|良品数量", COUNT_QUESTIONS["good"]),
        (r"(?:total\s+)?die\s+count|total\s+dies|芯片总数|总芯片数", COUNT_QUESTIONS["dies"]),
        (r"clusters?|失效团", COUNT_QUESTIONS["clusters"]),
    )
)


# ---------------------------------------------------------------- chat-style variants (training only)

#: Recognition questions as people dash them off in chat: a keyword, a request, a loose question.
#: `benchmarks/chat_phrasings.py` asks other wordings, so it measures what training did not show.
LOOSE_RECOGNITION: dict[str, list[str]] = {
    "en": ["Any defects?", "Defect pattern?", "Patterns?", "What do you see?", "Thoughts on this map?",
           "Anything wrong here?", "Anything off with this one?", "Check this wafer please.", "Can you look at this map?",
           "Please classify.", "What's going on with this wafer?", "Verdict?", "Any issues on this map?",
           "Failure pattern?", "What's the signature?", "Which pattern?", "Can you diagnose this?",
           "Is something wrong with this one?", "Pattern check please.", "What am I looking at?"],
    "zh": ["有缺陷吗？", "是哪种缺陷？", "看一下这张图。", "这片怎么了？", "这张图什么情况？", "帮忙分析一下。", "有没有问题？",
           "什么模式？", "麻烦看下这片。", "这是啥缺陷？", "识别一下。", "这片晶圆有啥毛病？", "缺陷类型？", "这图咋回事？"],
}

#: Context people put before or after a question; it changes nothing in the answer. {lot}, {tool} and
#: {slot} are filled with made-up lot numbers, tool names and wafer slots.
CHAT_CONTEXT: dict[str, list[str]] = {
    "en": ["This one is from lot {lot}.", "Came off {tool} this morning.", "Yield on lot {lot} is down.",
           "Third wafer like this today.", "The customer flagged this lot.", "Probe results for slot {slot} of lot {lot}.",
           "It went through {tool} after the PM.", "Seen on several wafers in this lot.", "Night shift sent it over.",
           "Engineering wants an answer before the lot moves on.", "Lot {lot}, slot {slot}.",
           "We changed the recipe on {tool} on Monday."],
    "zh": ["这是{lot}批次的。", "今天早上从{tool}下来的。", "{lot}批次良率掉了。", "今天第三片这样的了。", "客户投诉了这一批。",
           "这是{lot}批次第{slot}片的测试结果。", "{tool}保养后跑的。", "这一批好几片都这样。", "夜班发过来的。",
           "批次{lot}，第{slot}片。", "{tool}周一改了配方。"],
}
#: Greetings and lead-ins before a question (the question then starts in lower case).
CHAT_OPENERS: dict[str, list[str]] = {
    "en": ["Hi, ", "Hey bot, ", "Quick one: ", "Morning! ", "Question: ", "Hello team, ", "Hey, ", "Sorry to bug you, "],
    "zh": ["你好，", "麻烦问下，", "请教一下：", "早，", "问一下，", "打扰一下，"],
}
_TOOL_NAMES = ("ETCH", "CMP", "LITHO", "CVD", "IMP", "PVD", "DIFF", "WET")


def _chat_context(language: str, rng: random.Random) -> str:
    lot = rng.choice((f"{rng.randrange(10_000):04d}", f"A{rng.randrange(1000):03d}", f"LOT{rng.randrange(100, 1000)}"))
    tool = f"{rng.choice(_TOOL_NAMES)}-{rng.randrange(1, 13):02d}"
    return rng.choice(CHAT_CONTEXT[language]).format(lot=lot, tool=tool, slot=rng.randrange(1, 26))


def as_typed_in_chat(question: str, rng: random.Random, recognition: bool = False) -> str:
    """`question`, a bank question, as someone might type it in a Slack thread: with context after it
    or before it, after a greeting, or (when it is a `recognition` question) in loose words of
    `LOOSE_RECOGNITION`. The answer stays the same: a model trained on these reads the question in
    the message, not the words around it. (The prompt builder drops a sentence of context again,
    `the_question_among_statements`, so training shows the model the rest.) Same language as
    `question`; deterministic for a seeded `rng`."""
    language = language_of(question)
    if recognition and rng.random() < 0.4:
        question = rng.choice(LOOSE_RECOGNITION[language])
    gap = "" if language == "zh" else " "
    form = rng.random()
    if form < 0.4:
        return f"{question}{gap}{_chat_context(language, rng)}"
    if form < 0.65:
        return f"{_chat_context(language, rng)}{gap}{question}"
    if form < 0.9:
        opener = rng.choice(CHAT_OPENERS[language])
        return opener + question[0].lower() + question[1:]
    return question
